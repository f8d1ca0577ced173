"""StudentArch: one student architecture, JSON-able, buildable as a Hugging Face BERT classifier."""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from typing import Any

from transformers import BertConfig, BertForSequenceClassification, PreTrainedTokenizerBase


@dataclass(frozen=True)
class StudentArch:
    """A BERT-style encoder: ``num_layers`` blocks of width ``num_heads × head_dim``, FFN ``ffn_ratio ×`` width."""

    num_layers: int
    num_heads: int
    head_dim: int
    ffn_ratio: int

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"StudentArch.{name} must be a positive integer, got {value!r}")

    @property
    def hidden_size(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def intermediate_size(self) -> int:
        return self.ffn_ratio * self.hidden_size

    @property
    def summary(self) -> str:
        """A short name such as ``L2-H128-A4-F512`` (layers, hidden, attention heads, FFN)."""
        return f"L{self.num_layers}-H{self.hidden_size}-A{self.num_heads}-F{self.intermediate_size}"

    def to_dict(self) -> dict[str, int]:
        return {**asdict(self), "hidden_size": self.hidden_size, "intermediate_size": self.intermediate_size}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StudentArch:
        """Build from a dict holding at least the four sampled fields (extra keys are ignored)."""
        try:
            return cls(**{k: int(data[k]) for k in ("num_layers", "num_heads", "head_dim", "ffn_ratio")})
        except KeyError as err:
            raise ValueError(f"architecture is missing {err.args[0]!r}") from None

    @classmethod
    def from_summary(cls, summary: str) -> StudentArch:
        """Parse a :attr:`summary` such as ``L2-H128-A4-F512``; :class:`ValueError` when it names no student."""
        match = re.fullmatch(r"L(\d+)-H(\d+)-A(\d+)-F(\d+)", summary.strip())
        if match is None:
            raise ValueError(f"{summary!r} is not an architecture like L2-H128-A4-F512 (layers, hidden, heads, FFN)")
        layers, hidden, heads, ffn = (int(x) for x in match.groups())
        if heads < 1 or hidden % heads or ffn % hidden:
            raise ValueError(
                f"{summary!r}: the hidden size must divide by the heads and the FFN size by the hidden size"
            )
        return cls(num_layers=layers, num_heads=heads, head_dim=hidden // heads, ffn_ratio=ffn // hidden)

    def hf_config(self, *, vocab_size: int, num_labels: int, max_positions: int, pad_token_id: int = 0) -> BertConfig:
        """The Hugging Face ``BertConfig`` of this student."""
        config = BertConfig(
            vocab_size=vocab_size,
            hidden_size=self.hidden_size,
            num_hidden_layers=self.num_layers,
            num_attention_heads=self.num_heads,
            intermediate_size=self.intermediate_size,
            max_position_embeddings=max_positions,
            pad_token_id=pad_token_id,
        )
        config.num_labels = num_labels  # a property (it sets the label maps), not a constructor field
        return config

    def build(
        self, tokenizer: PreTrainedTokenizerBase, num_labels: int, max_positions: int = 512
    ) -> BertForSequenceClassification:
        """A freshly initialised student classifier for ``tokenizer``'s vocabulary."""
        config = self.hf_config(
            vocab_size=len(tokenizer),
            num_labels=num_labels,
            max_positions=max_positions,
            pad_token_id=tokenizer.pad_token_id or 0,
        )
        return BertForSequenceClassification(config)

    def encoder_flops(self, seq_len: int) -> int:
        """Forward FLOPs of the encoder for one sequence of ``seq_len`` tokens (2 × multiply-accumulates)."""
        d, f, n = self.hidden_size, self.intermediate_size, seq_len
        macs_per_layer = n * (4 * d * d + 2 * d * f) + 2 * n * n * d
        return 2 * self.num_layers * macs_per_layer
