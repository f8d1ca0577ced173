"""A classification task's examples, loaded from the demo generator, the Hugging Face Hub or local files."""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import random
from pathlib import Path
from typing import Any, NamedTuple

import datasets

from kdnas.config import ConfigError, DataConfig
from kdnas.data.demo import demo_datasets
from kdnas.errors import first_line

_READERS: dict[str, tuple[str, dict[str, Any]]] = {
    ".csv": ("csv", {"keep_default_na": False, "na_values": [""]}),
    ".tsv": ("csv", {"delimiter": "\t", "quoting": csv.QUOTE_NONE, "keep_default_na": False, "na_values": [""]}),
    ".json": ("json", {}),
    ".jsonl": ("json", {}),
    ".parquet": ("parquet", {}),
}
_SPLITS = ("train", "eval")


@dataclasses.dataclass(frozen=True)
class TaskData:
    """The train and eval examples of a classification task, with only its text and label columns."""

    name: str
    train: datasets.Dataset
    eval: datasets.Dataset
    text_columns: tuple[str, ...]
    label_column: str
    label_names: tuple[str, ...]
    metric: str
    _fingerprint: str = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        digest = hashlib.sha256()
        header = [self.name, self.text_columns, self.label_column, self.label_names]
        digest.update(json.dumps(header).encode())
        for split in _SPLITS:
            for column in (*self.text_columns, self.label_column):
                digest.update(json.dumps(self._dataset(split)[column][:]).encode())
        object.__setattr__(self, "_fingerprint", digest.hexdigest()[:16])

    @property
    def num_labels(self) -> int:
        """The number of classes."""
        return len(self.label_names)

    def texts(self, split: str) -> list[str] | list[tuple[str, str]]:
        """The texts of ``split`` ("train" or "eval"): strings, or pairs for a sentence-pair task."""
        dataset = self._dataset(split)
        columns = [dataset[column][:] for column in self.text_columns]
        return columns[0] if len(columns) == 1 else list(zip(*columns))

    def labels(self, split: str) -> list[int]:
        """The label ids of ``split`` ("train" or "eval")."""
        return self._dataset(split)[self.label_column][:]

    def fingerprint(self) -> str:
        """A short, stable hash of the task's name, columns, label names and examples."""
        return self._fingerprint

    def split_fingerprint(self, split: str) -> str:
        """A short, stable hash of the examples of ``split`` alone: texts and label names."""
        names = [self.label_names[i] for i in self.labels(split)]
        return hashlib.sha256(json.dumps([self.texts(split), names]).encode()).hexdigest()[:16]

    def _dataset(self, split: str) -> datasets.Dataset:
        if split not in _SPLITS:
            raise ValueError(f"split must be one of {_SPLITS}, got {split!r}")
        return self.train if split == "train" else self.eval


class _Split(NamedTuple):
    key: str  # The config key that chose this split, for error messages.
    where: str  # How error messages name this split.
    dataset: datasets.Dataset


def load_task(cfg: DataConfig) -> TaskData:
    """Load the task described by ``cfg``, raising :class:`ConfigError` on any problem with the data."""
    return _build_task(cfg, *_splits(cfg))


def _splits(cfg: DataConfig) -> tuple[str, _Split, _Split]:
    """The task's name and its train and eval splits as loaded (before any row limit)."""
    if cfg.source == "demo":
        name = "demo"
        splits = demo_datasets(cfg.demo_train_size, cfg.demo_eval_size, cfg.seed)
        train = _Split("data.demo_train_size", "demo[train]", splits["train"])
        eval_ = _Split("data.demo_eval_size", "demo[validation]", splits["validation"])
    elif cfg.source == "hub":
        assert cfg.hub_name is not None
        name = f"{cfg.hub_name}/{cfg.hub_config}" if cfg.hub_config else cfg.hub_name
        splits = _load_hub(cfg.hub_name, cfg.hub_config, name)
        train = _hub_split(splits, name, "data.train_split", cfg.train_split)
        eval_ = _hub_split(splits, name, "data.validation_split", cfg.validation_split)
    else:
        assert cfg.train_file is not None and cfg.validation_file is not None
        name = Path(cfg.train_file).name
        train = _load_file("data.train_file", cfg.train_file)
        eval_ = _load_file("data.validation_file", cfg.validation_file)
    return name, train, eval_


def _first_line(err: BaseException) -> str:
    while err.__cause__ is not None:  # `datasets` wraps the informative error in a generic one.
        err = err.__cause__
    return first_line(err)


def _load_hub(hub_name: str, hub_config: str | None, name: str) -> datasets.DatasetDict:
    try:
        return datasets.load_dataset(hub_name, hub_config)
    except Exception as err:
        raise ConfigError(f"data.hub_name: cannot load {name!r}: {_first_line(err)}") from None


def _hub_split(splits: datasets.DatasetDict, name: str, key: str, split: str) -> _Split:
    if split not in splits:
        raise ConfigError(f"{key} {split!r} is not a split of {name}; splits: {sorted(splits)}")
    return _Split(key, f"{name}[{split}]", splits[split])


def _load_file(key: str, path: str) -> _Split:
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"{key}: no such file: {path}")
    suffix = file.suffix.lower()
    if suffix not in _READERS:
        raise ConfigError(f"{key}: unsupported file type {suffix!r} ({path}); use one of {', '.join(_READERS)}")
    builder, options = _READERS[suffix]
    verbosity = datasets.logging.get_verbosity()
    datasets.logging.set_verbosity(datasets.logging.CRITICAL)  # its log lines would repeat the error we raise
    bars = not datasets.utils.are_progress_bars_disabled()
    datasets.disable_progress_bars()  # a file is read anew each time (below): no bar for each read
    try:
        # read anew every time: the `datasets` cache knows a local file by its modification time only, so a file
        # edited in place with its time kept (cp -p, rsync -a) would be read as the old data
        dataset = datasets.load_dataset(
            builder,
            data_files=str(file),
            split="train",
            download_mode=datasets.DownloadMode.FORCE_REDOWNLOAD,
            **options,
        )
    except Exception as err:
        if "corresponds to no data" in str(err):  # How `datasets` reports a file with no rows.
            raise ConfigError(f"{key}: {path} has no rows") from None
        raise ConfigError(f"{key}: cannot read {path}: {_first_line(err)}") from None
    finally:
        datasets.logging.set_verbosity(verbosity)
        if bars:
            datasets.enable_progress_bars()
    return _Split(key, path, dataset)


def _column(split: _Split, column: str, key: str) -> list[Any]:
    if column not in split.dataset.column_names:
        raise ConfigError(f"{key} {column!r} is not a column of {split.where}; columns: {split.dataset.column_names}")
    values = split.dataset[column][:]
    if None in values:
        raise ConfigError(f"{key} {column!r} has a missing value in row {values.index(None)} of {split.where}")
    return values


def _label_kind(split: _Split, label: str, values: list[Any]) -> type | None:
    """The one type of ``split``'s labels (int, str or bool), refusing lists, objects, floats and mixed types with
    the file and row; None for an empty split."""
    kind: type | None = None
    for row, value in enumerate(values):
        if isinstance(value, float):
            raise ConfigError(
                f"{label} holds floats in {split.where} (row {row}: {value}); only integer or string class labels "
                "are supported"
            )
        if not isinstance(value, (int, str)):
            what = type(value).__name__
            raise ConfigError(
                f"{label} holds a {what} in row {row} of {split.where}: class labels are integers or strings"
            )
        if kind is None:
            kind = type(value)
        elif type(value) is not kind:
            raise ConfigError(
                f"{label} mixes value types in {split.where}: row {row} is {type(value).__name__}, "
                f"earlier rows {kind.__name__}"
            )
    return kind


def _named_labels(label_names: list[str] | str | None) -> tuple[str, ...] | None:
    """``data.label_names`` as a tuple: the list, or the lines of the file it names."""
    if label_names is None:
        return None
    if isinstance(label_names, list):
        return tuple(label_names)
    file = Path(label_names)
    try:
        lines = file.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"data.label_names: cannot read {label_names}: {_first_line(err)}") from None
    while lines and not lines[-1].strip():
        lines.pop()
    return tuple(lines)


def _label_ids(
    cfg: DataConfig, name: str, train_split: _Split, eval_split: _Split, train: list[Any], eval_: list[Any]
) -> tuple[list[int], list[int], tuple[str, ...]]:
    column = cfg.label_column
    label = f"data.label_column {column!r}"
    feature = train_split.dataset.features[column]
    kinds = {_label_kind(train_split, label, train), _label_kind(eval_split, label, eval_)} - {None}
    if len(kinds) > 1:
        by_split = f"{train_split.where} {type(train[0]).__name__}, {eval_split.where} {type(eval_[0]).__name__}"
        raise ConfigError(f"{label} has labels of different types in the two splits: {by_split}")
    if len(set(train)) < 2:
        raise ConfigError(f"{label} has fewer than 2 distinct labels in the train split of {name}: {set(train)}")
    values = set(train) | set(eval_)
    given = _named_labels(cfg.label_names)
    if isinstance(feature, datasets.ClassLabel):
        names = tuple(feature.names)
        outside = sorted(v for v in values if not 0 <= v < len(names))
        if outside:
            raise ConfigError(f"{label} has values outside its {len(names)} class names in {name}: {outside[:5]}")
        if given is not None:
            raise ConfigError(f"data.label_names: {name} names its labels already ({', '.join(names[:5])}, …)")
        return train, eval_, names
    unseen = set(eval_) - set(train)
    if unseen:
        raise ConfigError(
            f"{label}: label(s) {sorted(map(str, unseen))[:5]} of the eval split never occur in the "
            f"train split of {name} (train labels: {sorted(map(str, set(train)))[:10]})"
        )
    if given is not None:
        return _labels_by_given_names(given, name, label, values, train, eval_)
    ordered = sorted(values)
    index = {value: i for i, value in enumerate(ordered)}
    contiguous = ordered == list(range(len(ordered)))
    names = tuple(str(i) for i in range(len(ordered))) if contiguous else tuple(str(v) for v in ordered)
    return [index[v] for v in train], [index[v] for v in eval_], names


def _labels_by_given_names(
    given: tuple[str, ...], name: str, label: str, values: set[Any], train: list[Any], eval_: list[Any]
) -> tuple[list[int], list[int], tuple[str, ...]]:
    """Label ids and names when ``data.label_names`` names the classes: integer labels index it, string labels
    must be among it."""
    if len(set(given)) != len(given) or len(given) < 2:
        raise ConfigError(
            f"data.label_names: give at least 2 distinct names, got {len(given)} ({len(set(given))} distinct)"
        )
    if all(isinstance(v, str) for v in values):
        index: dict[Any, int] = {n: i for i, n in enumerate(given)}
        outside = sorted(v for v in values if v not in index)
        if outside:
            raise ConfigError(f"{label} has labels that data.label_names lacks in {name}: {outside[:5]}")
    else:
        index = {i: i for i in range(len(given))}
        outside = sorted(v for v in values if v not in index)
        if outside:
            raise ConfigError(
                f"{label} has values outside the {len(given)} names of data.label_names in {name}: {outside[:5]}"
            )
    return [index[v] for v in train], [index[v] for v in eval_], given


def _rows(split: _Split, text_columns: tuple[str, ...], label: str) -> dict[str, list[Any]]:
    if len(split.dataset) == 0:
        raise ConfigError(f"{split.key}: {split.where} has no rows")
    rows = {column: [str(t) for t in _column(split, column, "data.text_columns")] for column in text_columns}
    rows[label] = _column(split, label, "data.label_column")
    return rows


def _kept(size: int, limit: int | None, seed: int) -> list[int]:
    """The sorted indices of the rows a seeded ``limit`` keeps out of ``size``."""
    if limit is None or limit >= size:
        return list(range(size))
    return sorted(random.Random(seed).sample(range(size), limit))


def _subset(rows: dict[str, list[Any]], limit: int | None, seed: int) -> dict[str, list[Any]]:
    keep = _kept(len(next(iter(rows.values()))), limit, seed)
    return {column: [values[i] for i in keep] for column, values in rows.items()}


def _build_task(cfg: DataConfig, name: str, train: _Split, eval_: _Split) -> TaskData:
    text_columns, label = tuple(cfg.text_columns), cfg.label_column
    train_rows = _rows(train, text_columns, label)
    eval_rows = _rows(eval_, text_columns, label)
    train_rows[label], eval_rows[label], label_names = _label_ids(
        cfg, name, train, eval_, train_rows[label], eval_rows[label]
    )
    features = datasets.Features(
        {
            **{column: datasets.Value("string") for column in text_columns},
            label: datasets.ClassLabel(names=list(label_names)),
        }
    )
    return TaskData(
        name=name,
        train=datasets.Dataset.from_dict(_subset(train_rows, cfg.max_train_samples, cfg.seed), features=features),
        eval=datasets.Dataset.from_dict(_subset(eval_rows, cfg.max_eval_samples, cfg.seed), features=features),
        text_columns=text_columns,
        label_column=label,
        label_names=label_names,
        metric=cfg.metric,
    )
