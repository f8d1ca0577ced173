"""The teacher layer one-layer students inherit: chosen per study by two short trainings, cached, recorded."""

from __future__ import annotations

from dataclasses import replace

import optuna
import pytest
import torch

import kdnas.tune.one_layer as one_layer
from conftest import students_vocabulary_bert
from kdnas.config import build_config
from kdnas.student import StudentArch
from kdnas.student.batches import encode
from kdnas.student.inheritance import inherit, inheritance_layer_map, inheritance_source
from kdnas.teachers.importance import activation_importance
from kdnas.teachers.loading import load_tokenizer
from kdnas.tune.one_layer import choose_one_layer, one_layer_student
from kdnas.tune.retrain import recorded_one_layer
from kdnas.tune.trial_inputs import TrialInputs

TEXTS = ["the film was not very good", "although the plot was dull , the acting was wonderful"] * 20
SPACE = {"depth": {"min": 1, "max": 2}, "heads": [2, 4], "head_dim": [8], "ffn_ratio": [1, 2]}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> TrialInputs:
    """A study's inputs around a BERT teacher of 4 layers (4 heads of 8, FFN 64) with the students' vocabulary."""
    tokenizer = load_tokenizer("minilm")
    teacher = students_vocabulary_bert(len(tokenizer))
    train = encode(tokenizer, TEXTS, [0, 1] * 20, 24)
    with torch.no_grad():
        logits = teacher(input_ids=train.input_ids, attention_mask=train.attention_mask).logits
    config = build_config(
        {"output_dir": str(tmp_path_factory.mktemp("study")), "student": {"space": SPACE}, "training": {"epochs": 1}}
    )
    return TrialInputs(
        config=config,
        metric="accuracy",
        label_names=("negative", "positive"),
        train=train,
        eval=encode(tokenizer, TEXTS[:8], [0, 1] * 4, 24),
        teacher_names=("t",),
        teacher_logits=logits.unsqueeze(0),
        students_dir=str(tmp_path_factory.mktemp("students")),
        inherit=inheritance_source("t", teacher, activation_importance(teacher, train), "uniform"),
    )


def _scored(monkeypatch, scores: list[float]) -> list[float]:
    """Make the calibration students score ``scores`` in turn (first layer, then last)."""
    given = list(scores)
    monkeypatch.setattr(one_layer, "evaluate", lambda *args, **kwargs: given.pop(0))
    return given


@pytest.mark.parametrize(("scores", "layer"), [([0.6, 0.8], 3), ([0.8, 0.6], 0), ([0.7, 0.7], 0)])
def test_the_layer_whose_student_scored_higher_is_chosen_a_tie_keeps_the_first(inputs, monkeypatch, scores, layer):
    left = _scored(monkeypatch, scores)
    choice = one_layer.calibrate_one_layer(inputs, one_layer_student(inputs.config.student.space, 8))
    assert not left, "both candidates were trained and scored"
    assert choice.layer == layer and choice.rule == "auto"
    assert choice.scores == {0: scores[0], 3: scores[1]}
    assert choice.student == "L1-H32-A4-F64" and choice.steps == 2  # 40 rows, batches of 32: one epoch
    assert choice.ran_on is not None and choice.ran_on["ray_task"] is False


def test_the_choice_is_cached_recorded_and_taken_by_every_one_layer_student(inputs, tmp_path, monkeypatch):
    _scored(monkeypatch, [0.5, 0.9])
    chosen = choose_one_layer(inputs, tmp_path)
    assert chosen.inherit is not None and chosen.inherit.one_layer is not None
    assert chosen.inherit.one_layer.layer == 3
    record = chosen.inherit.record()["one_layer"]
    assert record["layer"] == 3 and record["scores"] == {"0": 0.5, "3": 0.9} and record["student"] == "L1-H32-A4-F64"
    assert len(list(tmp_path.glob("t-one-layer-*.json"))) == 1

    def no_training(*args, **kwargs):
        raise AssertionError("a cached choice is not trained again")

    monkeypatch.setattr(one_layer, "calibrate_one_layer", no_training)
    again = choose_one_layer(inputs, tmp_path)
    assert again.inherit is not None and again.inherit.one_layer == chosen.inherit.one_layer
    tokenizer = load_tokenizer("minilm")
    student = StudentArch(num_layers=1, num_heads=2, head_dim=8, ffn_ratio=1).build(tokenizer, 2, max_positions=24)
    assert inherit(student, again.inherit)["layers"] == [3]
    deeper = StudentArch(num_layers=2, num_heads=2, head_dim=8, ffn_ratio=1).build(tokenizer, 2, max_positions=24)
    assert inherit(deeper, again.inherit)["layers"] == [0, 3]  # uniform as before from two layers


def test_a_real_calibration_records_what_it_measured(inputs, tmp_path):
    choice = choose_one_layer(inputs, tmp_path).inherit.one_layer
    assert choice is not None and set(choice.scores) == {0, 3}
    assert all(0.0 <= s <= 1.0 for s in choice.scores.values())
    assert choice.layer == max(choice.scores, key=lambda k: (choice.scores[k], -k))


def test_a_named_layer_other_rules_and_spaces_without_one_layer_students_train_nothing(inputs, tmp_path, monkeypatch):
    monkeypatch.setattr(one_layer, "calibrate_one_layer", lambda *a, **k: pytest.fail("nothing to calibrate"))

    def configured(**inherit_settings) -> TrialInputs:
        settings = {"student": {"space": SPACE, "inherit": inherit_settings}}
        return replace(inputs, config=build_config(settings))

    for named, layer in (("first", 0), ("last", 3)):
        choice = choose_one_layer(configured(one_layer=named), tmp_path).inherit.one_layer
        assert choice is not None and (choice.layer, choice.rule, choice.scores) == (layer, named, {})
    importance = replace(inputs, inherit=replace(inputs.inherit, rule="importance"))
    assert choose_one_layer(importance, tmp_path) is importance
    deep = replace(inputs, config=build_config({"student": {"space": {**SPACE, "depth": {"min": 2, "max": 3}}}}))
    assert choose_one_layer(deep, tmp_path) is deep
    one_layer_teacher = replace(inputs, inherit=replace(inputs.inherit, num_layers=1))  # nothing to choose from
    assert choose_one_layer(one_layer_teacher, tmp_path) is one_layer_teacher
    random = replace(inputs, inherit=None)
    assert choose_one_layer(random, tmp_path) is random
    assert not list(tmp_path.glob("*.json"))


def test_one_layer_student_is_the_largest_with_the_teachers_head_size():
    space = build_config({"student": {"space": {**SPACE, "head_dim": [16, 32, 64]}}}).student.space
    assert one_layer_student(space, 32) == StudentArch(num_layers=1, num_heads=4, head_dim=32, ffn_ratio=2)
    assert one_layer_student(space, 8) == StudentArch(num_layers=1, num_heads=4, head_dim=64, ffn_ratio=2)
    with pytest.raises(ValueError, match="not one of the teacher's 4 layers"):
        inheritance_layer_map(1, 4, "uniform", one_layer=4)
    assert inheritance_layer_map(1, 4, "uniform", one_layer=3) == [3] and inheritance_layer_map(1, 4, "last") == [3]


def test_a_recipe_that_diverges_fails_the_calibration_not_the_search(inputs):
    diverging = build_config({"student": {"space": SPACE}, "training": {"learning_rate": 1e30}})
    choice = one_layer.calibrate_one_layer(
        replace(inputs, config=diverging), one_layer_student(diverging.student.space, 8)
    )
    assert choice.layer == 0 and choice.scores == {}  # the first layer is kept; the trials fail with their reasons
    assert set(choice.failed) == {0, 3} and all("non-finite loss" in reason for reason in choice.failed.values())


def test_a_retrained_student_takes_the_layer_its_study_recorded():
    study = optuna.create_study()
    assert recorded_one_layer(study) is None  # students from random weights
    study.set_user_attr("inheritance", {"teacher": "minilm", "layers": "uniform"})
    assert recorded_one_layer(study) == "first"  # recorded before the choice existed: they took the first layer
    for layer, named in ((0, "first"), (5, "last")):
        study.set_user_attr("inheritance", {"teacher": "minilm", "one_layer": {"layer": layer, "rule": "auto"}})
        assert recorded_one_layer(study) == named
