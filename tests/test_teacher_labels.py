"""Teachers are matched to the task's labels by name, and a teacher without a trained head is refused (#38)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from kdnas.config import ConfigError, build_config
from kdnas.student import StudentArch
from kdnas.teachers.loading import load_teacher, load_tokenizer

PROBE = torch.tensor([[101, 2023, 2001, 2204, 102]])


def _teacher(root: Path, id2label: dict[int, str] | None, labels: int = 2) -> Path:
    tokenizer = load_tokenizer("minilm")
    torch.manual_seed(0)
    model = StudentArch(1, 2, 8, 1).build(tokenizer, labels, max_positions=64)
    if id2label is not None:
        model.config.id2label = id2label
        model.config.label2id = {name: i for i, name in id2label.items()}
    path = root / ("-".join(id2label.values()) if id2label else "unnamed")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def _load(path: Path, names: tuple[str, ...], **teacher: str):
    config = build_config({"teachers": [{"name": "t", "model": str(path), **teacher}]})
    return load_teacher(config, config.teachers[0], len(names), names)


def _logits(teacher) -> torch.Tensor:
    with torch.inference_mode():
        return teacher.model(input_ids=PROBE, attention_mask=torch.ones_like(PROBE)).logits


def test_a_teacher_whose_labels_are_in_another_order_is_reordered_by_name(tmp_path, caplog):
    path = _teacher(tmp_path, {0: "POSITIVE", 1: "NEGATIVE"})
    by_index = _load(path, ("0", "1"))
    assert by_index.label_order is None
    with caplog.at_level(logging.INFO, logger="kdnas.teachers.loading"):
        aligned = _load(path, ("negative", "positive"))
    assert aligned.label_order == (1, 0)
    assert torch.allclose(_logits(aligned), _logits(by_index)[:, [1, 0]])
    assert aligned.model.config.id2label == {0: "NEGATIVE", 1: "POSITIVE"}
    assert "labels aligned by name: NEGATIVE (output 1) → label 0, POSITIVE (output 0) → label 1" in caplog.text
    assert _load(path, ("positive", "negative")).label_order is None  # already the task's order
    assert _load(path, ("negative", "positive"), align_labels="index").label_order is None


def test_label_names_differing_from_the_task_are_refused_in_one_line(tmp_path):
    path = _teacher(tmp_path, {0: "happy", 1: "sad"})
    with pytest.raises(ConfigError, match=r"^teacher 't': its labels \['happy', 'sad'\] are not the task's "):
        _load(path, ("neg", "pos"))


def test_unnamed_labels_on_either_side_are_taken_by_index(tmp_path, caplog):
    unnamed = _teacher(tmp_path, None)
    named = _teacher(tmp_path, {0: "neg", 1: "pos"})
    with caplog.at_level(logging.INFO, logger="kdnas.teachers.loading"):
        assert _load(unnamed, ("neg", "pos")).label_order is None
        assert _load(named, ("0", "1")).label_order is None
        assert _load(unnamed, ("0", "1")).label_order is None  # nothing named: nothing to say
    assert "outputs taken in order as the task's labels (LABEL_0 → neg, LABEL_1 → pos)" in caplog.text
    assert "outputs taken in order as the task's labels (neg → 0, pos → 1)" in caplog.text
    assert "LABEL_0 → 0" not in caplog.text


def test_a_teacher_without_a_trained_classification_head_is_refused_unless_fitted():
    config = build_config({"teachers": [{"name": "bare", "model": "minilm"}]})
    with pytest.raises(ConfigError, match=r"^teacher 'bare' has no trained classification head \(classifier"):
        load_teacher(config, config.teachers[0], 2)
