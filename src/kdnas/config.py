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


class ConfigError(ValueError):
    """A configuration problem, with a one-line message naming the culprit."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


logger = logging.getLogger(__name__)

DEMO_TRANSFER_SIZE = 10_000
"""Unlabelled demo-generator sentences in the demo's transfer set."""
AUTO_AUGMENT_COPIES = 4
"""Augmented copies of each training text when ``data.transfer.augment_copies`` is unset and the task is not the
demo (whose generator provides transfer text instead)."""


class TransferConfig(_Section):
    """A transfer set: text the students learn from through the teachers' soft labels only (no hard labels)."""

    files: list[str] = Field(default_factory=list)
    splits: list[str] = Field(default_factory=list)
    demo_size: int = Field(DEMO_TRANSFER_SIZE, ge=0)
    unused_train_rows: bool = Field(
        False,
        description="the training rows that data.max_train_samples leaves out join the transfer set, unlabelled "
        "(a few-label task's in-domain text)",
    )
    augment_copies: int | None = Field(None, ge=0)
    replace_prob: float = Field(0.3, gt=0, le=1)
    neighbours: int = Field(8, ge=1)
    max_samples: int | None = Field(None, ge=1)
    per_epoch: int | None = Field(
        None,
        ge=1,
        description="transfer rows a student trains on per epoch, a fresh seeded sample each epoch beside every "
        "labelled row (null: the whole transfer set every epoch), so a trial's cost stays bounded as the transfer "
        "set grows",
    )


class DataConfig(_Section):
    """Where the task's examples come from and how they are scored."""

    source: Literal["demo", "hub", "files"] = "demo"
    hub_name: str | None = None
    hub_config: str | None = None
    train_file: str | None = None
    validation_file: str | None = None
    train_split: str = "train"
    validation_split: str = "validation"
    text_columns: list[str] = Field(default_factory=lambda: ["sentence"], min_length=1, max_length=2)
    label_column: str = "label"
    label_names: list[str] | str | None = Field(
        None,
        description="names of integer labels 0..n-1 in order, or a text file holding one per line (e.g. a dataset's "
        "labels.txt): teachers are matched to the task by these names",
    )
    metric: Literal["accuracy", "f1", "mcc"] = "accuracy"
    max_seq_length: int = Field(32, ge=4, le=4096)
    max_train_samples: int | None = Field(None, ge=1)
    max_eval_samples: int | None = Field(None, ge=1)
    demo_train_size: int = Field(3000, ge=10)
    demo_eval_size: int = Field(600, ge=10)
    seed: int = 0
    transfer: TransferConfig = TransferConfig()

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
        :data:`AUTO_AUGMENT_COPIES`."""
        if self.transfer.augment_copies is not None:
            return self.transfer.augment_copies
        return 0 if self.source == "demo" else AUTO_AUGMENT_COPIES


class FitConfig(_Section):
    """Fine-tuning of a teacher on the task."""

    epochs: float = Field(2.0, gt=0)
    learning_rate: float = Field(5e-5, gt=0)
    batch_size: int = Field(32, ge=1)
    weight_decay: float = Field(0.01, ge=0)
    max_seq_length: int | None = Field(None, ge=4)


class ScratchConfig(_Section):
    """A teacher architecture trained from scratch (with a byte-level BPE tokenizer trained on the task)."""

    family: Literal["gpt2", "bert"] = "gpt2"
    layers: int = Field(2, ge=1)
    hidden: int = Field(256, ge=8)
    heads: int = Field(4, ge=1)
    vocab_size: int = Field(4000, ge=300)

    @model_validator(mode="after")
    def _heads_divide_hidden(self) -> ScratchConfig:
        if self.hidden % self.heads:
            raise ValueError(f"scratch.hidden ({self.hidden}) must be divisible by scratch.heads ({self.heads})")
        return self


class TeacherConfig(_Section):
    """One teacher: a ready sequence classifier, or a backbone that ``kdnas teachers fit`` trains."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    model: str = "minilm"
    fit: FitConfig | None = None
    scratch: ScratchConfig | None = None
    trust_remote_code: bool = False
    align_labels: Literal["name", "index"] = Field(
        "name",
        description="how the teacher's outputs map to the task's labels: by name where both sides name their "
        "labels (refused when the names differ), else by index; 'index' always takes its outputs in order",
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
    max: int = Field(ge=1)

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
    heads: list[int] = Field(default_factory=lambda: [2, 4, 6, 8], min_length=1)
    head_dim: list[int] = Field(default_factory=lambda: [32], min_length=1)
    ffn_ratio: list[int] = Field(default_factory=lambda: [1, 2, 4], min_length=1)

    _check_choices = field_validator("heads", "head_dim", "ffn_ratio")(_positive_choices)


class ElasticConfig(_Section):
    """Train the importance-sorted inheritance teacher once per study as an elastic network, and slice every student
    out of it instead of the teacher (DynaBERT, Once-for-All)."""

    enabled: bool = Field(False, description="train the elastic network before the first trial")
    epochs: float = Field(1.0, gt=0, description="passes over the labelled rows and the transfer set")
    learning_rate: float = Field(1e-4, gt=0, description="AdamW's peak rate (linear warm-up over a tenth, then decay)")
    random_students: int = Field(
        2, ge=0, description="students drawn from the space each step beside its largest and its smallest"
    )


class InheritConfig(_Section):
    """Slice every student out of a BERT teacher that uses the students' vocabulary (Minitron / DynaBERT style)."""

    enabled: bool = True
    teacher: str | None = None
    layers: Literal["uniform", "importance", "first", "last"] = "uniform"
    one_layer: Literal["auto", "first", "last"] = "auto"
    calibration_size: int = Field(512, ge=1)
    elastic: ElasticConfig = ElasticConfig()


class StudentConfig(_Section):
    """The student family: its tokenizer, its architecture space, its size budget and its initialisation."""

    tokenizer: str = "minilm"
    space: SpaceConfig = SpaceConfig()
    max_params: int | None = Field(None, ge=1)
    inherit: InheritConfig = InheritConfig()

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


LAYER_MAPS = ("uniform", "skip", "last", "final", "emd")


class IntermediateConfig(_Section):
    """Intermediate-layer KD from teachers sharing the student's tokenizer; those teachers run on the fly."""

    enabled: bool = False
    teachers: list[str] | None = None
    weight: Scheduled = 0.1
    hidden: float = Field(1.0, ge=0)
    attention: float = Field(1.0, ge=0)
    attention_loss: Literal["kl", "mse"] = "kl"
    embedding: float = Field(1.0, ge=0)
    layer_map: Literal["uniform", "skip", "last", "final", "emd"] | list[int] = "uniform"
    emd_separate: bool = False

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
    temperature: list[float] | None = None
    alpha: list[float] | None = None
    intermediate: list[Literal["off", "uniform", "skip", "last", "final", "emd"]] | None = None

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
    temperature: Scheduled = 2.0
    combiner: Literal["mean", "learned", "weighted", "confidence", "gradient"] = "learned"
    teacher_weights: list[float] | None = None
    disagreement_bound: float = Field(0.6, gt=0, le=1)
    intermediate: IntermediateConfig = IntermediateConfig()
    space: KDSpaceConfig = KDSpaceConfig()

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

    @field_validator("learning_rate")
    @classmethod
    def _positive_rates(cls, values: list[float] | None) -> list[float] | None:
        if values is not None and (not values or len(set(values)) != len(values) or min(values) <= 0):
            raise ValueError("must be a non-empty list of positive rates without repeats")
        return values


class TrainingConfig(_Section):
    """The training budget of one student."""

    epochs: int = Field(2, ge=1)
    batch_size: int = Field(32, ge=1)
    learning_rate: float | None = Field(None, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    warmup_ratio: float = Field(0.1, ge=0, lt=1)
    seed: int = 0
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"  # auto: bf16 (else fp16) on CUDA, fp32 on the CPU
    detect_collapse: bool = Field(
        True,
        description="check each student for collapse (one class for every eval example, or the metric no better "
        "than the majority class's, while some teacher beats that level): one collapsed after its first epoch trains "
        "again once from its initial weights at half the learning rate; one still collapsed at the end is recorded "
        "and kept off the Pareto front",
    )
    space: TrainingSpaceConfig = TrainingSpaceConfig()


class LatencyConfig(_Section):
    """How latency is measured: fixed threads, warm-up, median of at least ``runs`` runs and ``min_run_time_s``."""

    device: Literal["cpu", "cuda", "auto"] = "cpu"
    batch_size: int = Field(1, ge=1)
    seq_len: int | None = Field(None, ge=1)
    threads: int = Field(1, ge=1)
    warmup: int = Field(5, ge=0)
    runs: int = Field(30, ge=3)
    min_run_time_s: float = Field(0.25, ge=0)  # more runs until the timed ones add up to this (fast models)
    budget_ms: float | None = Field(None, gt=0)
    cache: bool = True
    isolate: bool = True  # time each model while no training step runs on its node
    retime: bool = True  # after a search, time its students and teachers again on the driver's node (kdnas retime)


class ResourcesConfig(_Section):
    """Ray resources for one trial (fractions allowed)."""

    cpu: float = Field(1.0, gt=0)
    gpu: float = Field(0.0, ge=0)


class TeacherResourcesConfig(_Section):
    """Ray resources for each teacher task (fitting, logits, importance ranking) when the search runs on a Ray cluster;
    ``gpu: auto`` is 1 when the cluster (on a local Ray: this machine) has a GPU, else 0."""

    cpu: float = Field(1.0, gt=0)
    gpu: float | Literal["auto"] = "auto"

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
    grace_epochs: float = Field(1, gt=0)
    reduction_factor: int = Field(2, ge=2)
    margin_se: float = Field(1.0, ge=0)
    judge_by: Literal["label_probability", "metric"] = "label_probability"

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
        """``latency_bins`` belonged to the earlier rule (ASHA within latency bins): accepted, with a warning, so
        configs and studies from before still load."""
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
    storage: str | None = None
    n_trials: int = Field(8, ge=1)
    time_budget_s: float | None = Field(None, gt=0)
    reuse_duplicates: bool = True
    sampler: Literal["tpe", "nsga2", "gp", "random"] = "tpe"
    startup_trials: int = Field(3, ge=1)
    seed: int = 0
    max_concurrent_trials: int = Field(2, ge=1)
    ray_address: str | None = None
    resources_per_trial: ResourcesConfig = ResourcesConfig()
    resources_per_teacher: TeacherResourcesConfig = TeacherResourcesConfig()
    max_failures: int = Field(0, ge=0)
    resource_wait_s: float = Field(900.0, gt=0)
    storage_path: str | None = None
    early_stopping: EarlyStoppingConfig = EarlyStoppingConfig()

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
    data: DataConfig = DataConfig()
    teachers: list[TeacherConfig] = Field(default_factory=_default_teachers, min_length=1)
    student: StudentConfig = StudentConfig()
    kd: KDConfig = KDConfig()
    training: TrainingConfig = TrainingConfig()
    latency: LatencyConfig = LatencyConfig()
    search: SearchConfig = SearchConfig()

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


def safe_yaml(text: str) -> Any:
    """``text`` parsed as YAML by the safe loader, a key written twice in one mapping refused."""
    return yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader: builds plain data only


def parse_override(text: str) -> tuple[list[str], Any]:
    """Parse ``section.key=value`` (value in YAML syntax) into a key path and a value."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {text!r} is not of the form section.key=value")
    try:
        parsed = safe_yaml(value)
    except DuplicateKeyError as err:
        raise ConfigError(f"override {text!r}: {err}") from None
    except yaml.YAMLError:
        raise ConfigError(f"override {text!r}: value is not valid YAML") from None
    return key.strip().split("."), parsed


def apply_override(raw: dict[str, Any], path: list[str], value: Any) -> None:
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
            loaded = safe_yaml(text)
        except DuplicateKeyError as err:
            raise ConfigError(f"config {source}: {err}") from None
        except yaml.YAMLError as err:
            raise ConfigError(f"config {source} is not valid YAML: {str(err).splitlines()[0]}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"config {source} must be a mapping of sections")
        raw = loaded or {}
    for text in overrides:
        apply_override(raw, *parse_override(text))
    return build_config(raw)


def dump_config(config: KDNASConfig) -> dict[str, Any]:
    """The config as plain JSON-able data."""
    return config.model_dump(mode="json")
