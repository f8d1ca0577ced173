from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import datasets
import pandas as pd
import pytest

from kdnas.config import ConfigError, DataConfig
from kdnas.data import TaskData, demo_datasets, generate_demo, load_task
from kdnas.data.demo import label_of

SST2_DIR = Path(os.environ.get("KDNAS_SST2_DIR", Path(__file__).resolve().parents[1] / ".." / "shared/data/sst2"))

ROWS = [
    {"sentence": "a fine film", "label": 1},
    {"sentence": 'a "quoted" dud', "label": 0},
    {"sentence": "10,000 reasons to stay home", "label": 0},
    {"sentence": "null", "label": 1},
]


@pytest.fixture(autouse=True)
def _datasets_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))


def _write(path: Path, rows: list[dict[str, Any]]) -> str:
    columns = list(rows[0]) if rows else ["sentence", "label"]
    if path.suffix == ".tsv":  # Written by hand: pandas would quote the quote characters.
        lines = ["\t".join(columns)] + ["\t".join(str(row[c]) for c in columns) for row in rows]
        path.write_text("\n".join(lines) + "\n")
    elif path.suffix == ".csv":
        pd.DataFrame(rows, columns=columns).to_csv(path, index=False)
    elif path.suffix == ".json":
        path.write_text(json.dumps(rows))
    elif path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    else:
        pd.DataFrame(rows, columns=columns).to_parquet(path)
    return str(path)


def _files_config(
    tmp_path: Path, train: list[dict[str, Any]], eval_: list[dict[str, Any]], suffix: str = ".csv", **kwargs: Any
) -> DataConfig:
    return DataConfig(
        source="files",
        train_file=_write(tmp_path / f"train{suffix}", train),
        validation_file=_write(tmp_path / f"dev{suffix}", eval_),
        **kwargs,
    )


def test_demo_is_deterministic() -> None:
    assert generate_demo(300, 3) == generate_demo(300, 3)
    assert generate_demo(300, 3) != generate_demo(300, 4)
    first, again = demo_datasets(100, 50, 7), demo_datasets(100, 50, 7)
    for split in ("train", "validation"):
        assert first[split][:] == again[split][:]
    assert demo_datasets(100, 50, 8)["train"][:] != first["train"][:]


def test_demo_is_balanced_and_compositional() -> None:
    examples = generate_demo(4000, 0)
    assert 0.4 <= sum(label for _, label in examples) / len(examples) <= 0.6
    compositional = [s for s, _ in examples if {"not", "never", "hardly", "but", "although"} & set(s.split())]
    assert len(compositional) / len(examples) > 0.5


def test_demo_labels_follow_the_rules() -> None:
    for sentence, label in generate_demo(3000, 1):
        assert label_of(sentence) == label, sentence


@pytest.mark.parametrize(
    ("sentence", "label"),
    [
        ("the film was good", 1),
        ("the film was very dull", 0),
        ("the film was not good", 0),
        ("the film was hardly extremely dull", 1),
        ("it is not true that the film was good", 0),
        ("it is not true that the film never felt charming", 1),
        ("the film was good , but the acting was awful", 0),
        ("the film was awful , but the acting was not awful", 1),
        ("although the film was good , the acting was awful", 0),
        ("although the film was awful , the acting was good", 1),
        ("the film was good , although the acting was awful", 1),
        ("the film was not good , although the acting was good", 0),
        ("the film was dull and the acting never felt charming", 0),
        ("it is not true that the plot was dull and this book was great", 1),
    ],
)
def test_label_rules(sentence: str, label: int) -> None:
    assert label_of(sentence) == label


@pytest.mark.parametrize("sentence", ["the film was good and the acting was awful", "the film was purple"])
def test_label_rules_reject_ungrammatical(sentence: str) -> None:
    with pytest.raises(ValueError):
        label_of(sentence)


def test_demo_datasets_splits() -> None:
    splits = demo_datasets(500, 200, 0)
    assert set(splits) == {"train", "validation"}
    assert (len(splits["train"]), len(splits["validation"])) == (500, 200)
    assert splits["train"].column_names == ["sentence", "label"]
    assert not set(splits["train"]["sentence"][:]) & set(splits["validation"]["sentence"][:])


def test_load_demo_task() -> None:
    task = load_task(DataConfig(demo_train_size=200, demo_eval_size=50, seed=2))
    assert task.name == "demo"
    assert task.label_names == ("negative", "positive")
    assert task.num_labels == 2
    assert task.text_columns == ("sentence",)
    assert len(task.texts("train")) == 200 and len(task.labels("eval")) == 50
    assert isinstance(task.texts("eval")[0], str)
    assert task.fingerprint() == load_task(DataConfig(demo_train_size=200, demo_eval_size=50, seed=2)).fingerprint()
    with pytest.raises(ValueError):
        task.texts("test")


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".json", ".jsonl", ".parquet"])
def test_files_round_trip(tmp_path: Path, suffix: str) -> None:
    task = load_task(_files_config(tmp_path, ROWS, ROWS[:2], suffix, metric="f1"))
    assert task.name == f"train{suffix}"
    assert task.texts("train") == [row["sentence"] for row in ROWS]
    assert task.labels("train") == [1, 0, 0, 1]
    assert task.texts("eval") == [row["sentence"] for row in ROWS[:2]]
    assert task.label_names == ("0", "1")
    assert task.metric == "f1"


def test_files_keep_only_text_and_label(tmp_path: Path) -> None:
    rows = [{"id": i, "sentence": f"s{i}", "label": i % 2, "extra": "x"} for i in range(4)]
    task = load_task(_files_config(tmp_path, rows, rows))
    assert task.train.column_names == task.eval.column_names == ["sentence", "label"]


def test_string_labels_are_mapped(tmp_path: Path) -> None:
    train = [
        {"sentence": "a", "label": "pos"},
        {"sentence": "b", "label": "neg"},
        {"sentence": "e", "label": "neutral"},
    ]
    eval_ = [{"sentence": "c", "label": "neutral"}, {"sentence": "d", "label": "pos"}]
    task = load_task(_files_config(tmp_path, train, eval_))
    assert task.label_names == ("neg", "neutral", "pos")
    assert task.labels("train") == [2, 0, 1] and task.labels("eval") == [1, 2]
    assert task.train.features["label"].names == ["neg", "neutral", "pos"]


def test_non_contiguous_int_labels_are_mapped(tmp_path: Path) -> None:
    rows = [{"sentence": "a", "label": 3}, {"sentence": "b", "label": 1}]
    task = load_task(_files_config(tmp_path, rows, rows, ".jsonl"))
    assert task.label_names == ("1", "3")
    assert task.labels("train") == [1, 0]


def test_sentence_pairs(tmp_path: Path) -> None:
    rows = [{"premise": f"p{i}", "hypothesis": f"h{i}", "label": i % 3} for i in range(6)]
    task = load_task(_files_config(tmp_path, rows, rows, text_columns=["premise", "hypothesis"]))
    assert task.text_columns == ("premise", "hypothesis")
    assert task.texts("train")[:2] == [("p0", "h0"), ("p1", "h1")]
    assert task.num_labels == 3


def test_max_samples_take_a_seeded_subset(tmp_path: Path) -> None:
    rows = [{"sentence": f"s{i}", "label": int(i >= 50)} for i in range(100)]  # Sorted by class.
    cfg = _files_config(tmp_path, rows, rows, max_train_samples=10, max_eval_samples=5)
    task = load_task(cfg)
    assert len(task.train) == 10 and len(task.eval) == 5
    assert set(task.labels("train")) == {0, 1}
    assert set(task.texts("train")) <= {row["sentence"] for row in rows}
    assert task.texts("train") == load_task(cfg).texts("train")
    assert task.texts("train") != load_task(cfg.model_copy(update={"seed": 1})).texts("train")


def test_fingerprint_is_stable_and_content_sensitive(tmp_path: Path) -> None:
    fingerprint = load_task(_files_config(tmp_path, ROWS, ROWS)).fingerprint()
    assert len(fingerprint) == 16 and int(fingerprint, 16) >= 0
    assert load_task(_files_config(tmp_path, ROWS, ROWS)).fingerprint() == fingerprint
    relabelled = [*ROWS[:-1], {"sentence": "null", "label": 0}]
    assert load_task(_files_config(tmp_path, ROWS, relabelled)).fingerprint() != fingerprint
    reworded = [*ROWS[:-1], {"sentence": "nil", "label": 1}]
    assert load_task(_files_config(tmp_path, reworded, ROWS)).fingerprint() != fingerprint


def test_hub(monkeypatch: pytest.MonkeyPatch) -> None:
    features = datasets.Features(
        {
            "sentence": datasets.Value("string"),
            "label": datasets.ClassLabel(names=["negative", "positive"]),
            "idx": datasets.Value("int32"),
        }
    )
    split = {"sentence": ["good", "bad", "fine"], "label": [1, 0, 1], "idx": [0, 1, 2]}
    calls = []

    def load_dataset(name: str, config: str | None) -> datasets.DatasetDict:
        calls.append((name, config))
        return datasets.DatasetDict(
            {
                "train": datasets.Dataset.from_dict(split, features=features),
                "validation": datasets.Dataset.from_dict(split, features=features),
            }
        )

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    task = load_task(DataConfig(source="hub", hub_name="glue", hub_config="sst2"))
    assert calls == [("glue", "sst2")]
    assert task.name == "glue/sst2"
    assert task.label_names == ("negative", "positive")
    assert task.train.column_names == ["sentence", "label"]
    assert task.labels("eval") == [1, 0, 1]

    with pytest.raises(ConfigError, match=r"^data\.validation_split 'dev' is not a split of glue/sst2; splits: "):
        load_task(DataConfig(source="hub", hub_name="glue", hub_config="sst2", validation_split="dev"))


def test_hub_load_errors_are_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    def load_dataset(name: str, config: str | None) -> datasets.DatasetDict:
        raise FileNotFoundError(f"Dataset '{name}' doesn't exist on the Hub\nor cannot be accessed.")

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    with pytest.raises(ConfigError) as info:
        load_task(DataConfig(source="hub", hub_name="nope"))
    assert str(info.value) == "data.hub_name: cannot load 'nope': Dataset 'nope' doesn't exist on the Hub"


def test_hub_split_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    features = datasets.Features({"sentence": datasets.Value("string"), "label": datasets.ClassLabel(num_classes=2)})
    test_split = datasets.Dataset.from_dict({"sentence": ["a", "b"], "label": [-1, -1]}, features=features)
    train_split = datasets.Dataset.from_dict({"sentence": ["a", "b"], "label": [0, 1]}, features=features)
    empty_split = train_split.select([])
    splits = datasets.DatasetDict({"train": train_split, "test": test_split, "empty": empty_split})
    monkeypatch.setattr(datasets, "load_dataset", lambda name, config: splits)
    with pytest.raises(ConfigError, match=r"^data\.label_column 'label' has values outside its 2 class names"):
        load_task(DataConfig(source="hub", hub_name="glue", validation_split="test"))
    with pytest.raises(ConfigError, match=r"^data\.validation_split: glue\[empty\] has no rows$"):
        load_task(DataConfig(source="hub", hub_name="glue", validation_split="empty"))


@pytest.mark.parametrize(
    ("train", "overrides", "message"),
    [
        (ROWS, {"label_column": "stars"}, r"^data\.label_column 'stars' is not a column of .*train\.csv; columns: "),
        (ROWS, {"text_columns": ["text"]}, r"^data\.text_columns 'text' is not a column of .*train\.csv; columns: "),
        ([], {}, r"^data\.train_file: .*train\.csv has no rows$"),
        ([{"sentence": "a", "label": 1}, {"sentence": "b", "label": 1}], {}, r"^data\.label_column 'label' has fewer "),
        (
            [{"sentence": "a", "label": 1}, {"sentence": "", "label": 0}],
            {},
            r"^data\.text_columns 'sentence' has a missing value in row 1 of .*train\.csv$",
        ),
        (
            [{"sentence": "a", "label": 1}, {"sentence": "b", "label": None}],
            {},
            r"^data\.label_column 'label' has a missing value in row 1 of .*train\.csv$",
        ),
        (
            [{"sentence": "a", "label": 0.5}, {"sentence": "b", "label": 1.5}],
            {},
            r"^data\.label_column 'label' holds floats",
        ),
    ],
)
def test_file_data_errors(tmp_path: Path, train: list[dict[str, Any]], overrides: dict[str, Any], message: str) -> None:
    cfg = DataConfig(
        source="files",
        train_file=_write(tmp_path / "train.csv", train),
        validation_file=_write(tmp_path / "dev.csv", ROWS),
        **overrides,
    )
    with pytest.raises(ConfigError, match=message):
        load_task(cfg)


def test_file_errors(tmp_path: Path) -> None:
    dev = _write(tmp_path / "dev.csv", ROWS)
    missing = str(tmp_path / "nope.csv")
    with pytest.raises(ConfigError, match=rf"^data\.train_file: no such file: {missing}$"):
        load_task(DataConfig(source="files", train_file=missing, validation_file=dev))
    xlsx = tmp_path / "train.xlsx"
    xlsx.write_text("")
    with pytest.raises(ConfigError, match=r"^data\.validation_file: unsupported file type '\.xlsx'"):
        load_task(DataConfig(source="files", train_file=dev, validation_file=str(xlsx)))
    empty = _write(tmp_path / "empty.parquet", [])
    with pytest.raises(ConfigError, match=r"^data\.validation_file: cannot read .*empty\.parquet: "):
        load_task(DataConfig(source="files", train_file=dev, validation_file=empty))
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(ConfigError, match=r"^data\.train_file: cannot read .*broken\.json: JSON parse error"):
        load_task(DataConfig(source="files", train_file=str(broken), validation_file=dev))


@pytest.mark.skipif(not (SST2_DIR / "train.tsv").is_file(), reason=f"SST-2 not found in {SST2_DIR}")
def test_real_sst2() -> None:
    cfg = DataConfig(source="files", train_file=str(SST2_DIR / "train.tsv"), validation_file=str(SST2_DIR / "dev.tsv"))
    task = load_task(cfg)
    assert isinstance(task, TaskData)
    assert (len(task.train), len(task.eval)) == (67349, 872)
    assert task.label_names == ("0", "1")
    assert sum(task.labels("train")) == 37569 and sum(task.labels("eval")) == 444
    assert task.texts("train")[0] == "hide new secretions from the parental units "
    assert "10,000 " in task.texts("train")  # Kept as text, trailing space and all.


def test_label_names_name_integer_labels_from_a_list_or_a_file(tmp_path: Path) -> None:
    rows = [{"sentence": f"s{i}", "label": i % 3} for i in range(9)]
    names = ["card_arrival", "card_linking", "exchange_rate"]
    assert load_task(_files_config(tmp_path, rows, rows, label_names=names)).label_names == tuple(names)
    (tmp_path / "labels.txt").write_text("\n".join(names) + "\n\n")
    task = load_task(_files_config(tmp_path, rows, rows, label_names=str(tmp_path / "labels.txt")))
    assert task.label_names == tuple(names) and task.labels("train")[:3] == [0, 1, 2]
    with pytest.raises(ConfigError, match=r"outside the 2 names of data.label_names in train.csv: \[2\]"):
        load_task(_files_config(tmp_path, rows, rows, label_names=names[:2]))
    words = [{"sentence": f"s{i}", "label": ["neg", "pos"][i % 2]} for i in range(4)]
    ordered = load_task(_files_config(tmp_path, words, words, label_names=["pos", "neg"]))
    assert ordered.label_names == ("pos", "neg") and ordered.labels("train")[:2] == [1, 0]
    with pytest.raises(ConfigError, match=r"labels that data.label_names lacks in train.csv: \['neg'\]"):
        load_task(_files_config(tmp_path, words, words, label_names=["pos", "meh"]))


@pytest.mark.parametrize(
    ("eval_label", "message"),
    [
        ([1, 0], r"holds a list in row 1 of .*dev\.jsonl: class labels are integers or strings"),
        ({"id": 1}, r"holds a dict in row 1 of .*dev\.jsonl"),
    ],
)
def test_labels_that_are_lists_or_objects_name_the_file_and_row(tmp_path: Path, eval_label: Any, message: str) -> None:
    rows = [{"sentence": "a", "label": 0}, {"sentence": "b", "label": 1}]
    bad = [{"sentence": "a", "label": 0}, {"sentence": "b", "label": eval_label}]
    with pytest.raises(ConfigError, match=message):
        load_task(_files_config(tmp_path, rows, bad, ".jsonl"))


def test_labels_of_another_type_in_the_eval_file_name_both_files(tmp_path: Path) -> None:
    ints = [{"sentence": "a", "label": 0}, {"sentence": "b", "label": 1}]
    words = [{"sentence": "a", "label": "neg"}, {"sentence": "b", "label": "pos"}]
    with pytest.raises(ConfigError, match=r"different types in the two splits: .*train\.jsonl int, .*dev\.jsonl str"):
        load_task(_files_config(tmp_path, ints, words, ".jsonl"))


def test_a_file_edited_in_place_with_its_modification_time_kept_is_read_anew(tmp_path: Path) -> None:
    rows = [{"sentence": f"s{i}", "label": i % 2} for i in range(6)]
    cfg = _files_config(tmp_path, rows, rows)
    first = load_task(cfg)
    train = Path(cfg.train_file or "")
    stat = train.stat()
    train.write_text(train.read_text().replace("s1,", "t1,"))  # same size, as `cp -p` or `rsync -a` would leave it
    os.utime(train, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    again = load_task(cfg)
    assert "t1" in again.texts("train") and again.fingerprint() != first.fingerprint()
