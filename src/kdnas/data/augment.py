"""Offline data augmentation in the spirit of TinyBERT's: words swapped for their embedding-space neighbours.

A word that is one whole token of the students' vocabulary is, with probability ``replace_prob``, replaced by one
of its ``neighbours`` nearest tokens (cosine similarity of a teacher's input embeddings, among whole-word alphabetic
tokens). Other words (several word pieces, punctuation, numbers) are kept. Deterministic for a given seed; needs no
external resource.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import torch
from transformers import PreTrainedTokenizerBase

Text = str | tuple[str, str]


def _candidates(tokenizer: PreTrainedTokenizerBase) -> dict[str, int]:
    """Whole-word alphabetic tokens (no specials, no ``##`` pieces, no ``[unused]``) by id."""
    special = set(tokenizer.all_special_tokens)
    return {
        token: index
        for token, index in tokenizer.get_vocab().items()
        if token.isalpha() and token not in special and len(token) > 1
    }


def _neighbour_table(
    words: set[str], tokenizer: PreTrainedTokenizerBase, embeddings: torch.Tensor, k: int
) -> dict[str, list[str]]:
    """For each of ``words`` that is a candidate token, its ``k`` nearest other candidate tokens."""
    candidates = _candidates(tokenizer)
    known = sorted(w for w in words if w in candidates)
    if not known:
        return {}
    names = sorted(candidates, key=candidates.__getitem__)
    table = torch.nn.functional.normalize(embeddings[[candidates[n] for n in names]].float(), dim=-1)
    position = {name: i for i, name in enumerate(names)}
    table_rows = table[[position[w] for w in known]]
    neighbours: dict[str, list[str]] = {}
    for start in range(0, len(known), 1024):
        sims = table_rows[start : start + 1024] @ table.T
        top = sims.topk(min(k + 1, len(names)), dim=-1).indices.tolist()
        for word, row in zip(known[start : start + 1024], top):
            neighbours[word] = [names[i] for i in row if names[i] != word][:k]
    return neighbours


def augment_texts(
    texts: Sequence[Text],
    tokenizer: PreTrainedTokenizerBase,
    embeddings: torch.Tensor,
    *,
    copies: int,
    replace_prob: float,
    neighbours: int,
    seed: int,
) -> list[Text]:
    """``copies`` augmented versions of each of ``texts`` (copy-major order), deterministic for ``seed``."""
    if copies == 0 or not texts:
        return []
    lower = tokenizer("A")["input_ids"] == tokenizer("a")["input_ids"]  # an uncased vocabulary

    def words_of(text: str) -> list[str]:
        return text.split()

    def key(word: str) -> str:
        return word.lower() if lower else word

    sides = [side for text in texts for side in ((text,) if isinstance(text, str) else text)]
    vocabulary = {key(w) for side in sides for w in words_of(side)}
    table = _neighbour_table(vocabulary, tokenizer, embeddings, neighbours)
    rng = random.Random(f"kdnas-augment-{seed}")

    def rewrite(side: str) -> str:
        out = []
        for word in words_of(side):
            options = table.get(key(word))
            out.append(rng.choice(options) if options and rng.random() < replace_prob else word)
        return " ".join(out)

    augmented: list[Text] = []
    for _ in range(copies):
        for text in texts:
            augmented.append(rewrite(text) if isinstance(text, str) else (rewrite(text[0]), rewrite(text[1])))
    return augmented
