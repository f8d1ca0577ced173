"""The elastic network (``student.inherit.elastic``): the importance-sorted teacher computes what the teacher does,
every student is a prefix of its weights, the sandwich training moves exactly the slices students use, and a study
trains it once, caches it and slices its students from it."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from transformers import BertForSequenceClassification

from conftest import students_vocabulary_bert
from kdnas.config import ElasticConfig, KDConfig, SpaceConfig, build_config
from kdnas.student import StudentArch
from kdnas.student.batches import batch_at, encode
from kdnas.student.inheritance import inherit, inheritance_source
from kdnas.study.storage import fingerprint_differences
from kdnas.teachers.elastic import sandwich_students, sorted_source, train_elastic
from kdnas.teachers.importance import activation_importance
from kdnas.teachers.loading import load_tokenizer
from kdnas.tune.elastic_phase import elastic_inputs
from kdnas.tune.fingerprint import config_fingerprint
from kdnas.tune.inputs import UNLABELLED
from kdnas.tune.trial_inputs import TrialInputs, initialise

TEXTS = [
    "the film was not very good",
    "although the plot was dull , the acting was wonderful",
    "it is not true that the soundtrack was bad",
    "the cast felt truly awful and the story was boring",
] * 4
SPACE = SpaceConfig(depth={"min": 1, "max": 3}, heads=[2, 4], head_dim=[8], ffn_ratio=[1, 2])


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer("minilm")


@pytest.fixture(scope="module")
def teacher(tokenizer) -> BertForSequenceClassification:
    return students_vocabulary_bert(len(tokenizer))


@pytest.fixture(scope="module")
def data(tokenizer):
    return encode(tokenizer, TEXTS, [0, 1] * 8, 24)


@pytest.fixture(scope="module")
def source(teacher, data):
    return inheritance_source("t", teacher, activation_importance(teacher, data), "uniform")


def _student(tokenizer, arch: StudentArch) -> BertForSequenceClassification:
    torch.manual_seed(0)
    return arch.build(tokenizer, num_labels=2, max_positions=24).eval()


def _logits(model, data) -> torch.Tensor:
    with torch.no_grad():
        return model(**batch_at(data, torch.arange(len(data)), torch.device("cpu"))).logits


def test_the_sorted_teacher_computes_what_the_teacher_does_and_its_students_are_the_same(
    tokenizer, teacher, source, data
):
    ranked = sorted_source(source)
    full = StudentArch(num_layers=4, num_heads=4, head_dim=8, ffn_ratio=2)
    whole = _student(tokenizer, full)
    inherit(whole, ranked)
    assert torch.allclose(_logits(whole, data), _logits(teacher, data), atol=1e-5)
    small = StudentArch(num_layers=2, num_heads=2, head_dim=8, ffn_ratio=1)
    from_teacher, from_sorted = _student(tokenizer, small), _student(tokenizer, small)
    inherit(from_teacher, source)
    record = inherit(from_sorted, ranked)
    assert record["heads"] == [[0, 1], [0, 1]]  # the most important parts come first: every student is a prefix
    assert torch.allclose(_logits(from_sorted, data), _logits(from_teacher, data), atol=1e-5)
    word = ranked.state["bert.embeddings.word_embeddings.weight"]
    assert torch.equal(from_sorted.state_dict()["bert.embeddings.word_embeddings.weight"], word[:, :16])


def test_the_sandwich_holds_the_students_that_inherit_everything(source):
    archs = sandwich_students(SPACE, source)
    assert archs[0].summary == "L1-H16-A2-F16" and archs[-1].summary == "L3-H32-A4-F64" and len(archs) == 12
    other_head_size = SpaceConfig(head_dim=[16])
    assert sandwich_students(other_head_size, source) == []


def _train(source, data, **settings):
    tokenizer = load_tokenizer("minilm")
    labels = torch.cat([data.labels[:8], torch.full((8,), UNLABELLED)])
    rows = replace(data, labels=labels)
    teacher_logits = torch.randn(1, len(rows), 2, generator=torch.Generator().manual_seed(0))
    return train_elastic(
        sorted_source(source),
        rows,
        teacher_logits,
        space=SPACE,
        kd=KDConfig(),
        settings=ElasticConfig(enabled=True, **settings),
        build=lambda arch: arch.build(tokenizer, num_labels=2, max_positions=24),
        batch_size=4,
        seed=0,
    )


def test_elastic_training_moves_the_slices_students_use_and_nothing_else(source, data):
    before = sorted_source(source).state
    result = _train(source, data, epochs=1, learning_rate=1e-3)
    after = result.state
    assert result.record.steps == 4 and result.record.students == ["L1-H16-A2-F16", "L3-H32-A4-F64"]
    word = "bert.embeddings.word_embeddings.weight"
    assert not torch.equal(after[word][:, :32], before[word][:, :32])
    query = "bert.encoder.layer.{}.attention.self.query.weight"
    for layer in (0, 2, 3):  # uniform: 3 layers take 0, 2, 3 (1 layer: layer 0)
        assert not torch.equal(after[query.format(layer)], before[query.format(layer)])
    assert torch.equal(after[query.format(1)], before[query.format(1)])  # no student of the space takes layer 1
    assert all(torch.isfinite(v).all() for v in after.values())


def test_a_study_trains_its_elastic_network_once_and_slices_students_from_it(tmp_path, source, data, tokenizer):
    raw = {
        "student": {"space": SPACE.model_dump(), "inherit": {"elastic": {"enabled": True, "epochs": 0.5}}},
        "training": {"batch_size": 4},
        "data": {"max_seq_length": 24},
    }
    inputs = TrialInputs(
        config=build_config(raw),
        metric="accuracy",
        label_names=("neg", "pos"),
        train=data,
        eval=data,
        teacher_names=("t",),
        teacher_logits=torch.randn(1, len(data), 2, generator=torch.Generator().manual_seed(0)),
        students_dir=str(tmp_path / "students"),
        inherit=source,
    )
    elastic = elastic_inputs(inputs, tmp_path)
    recorded = elastic.inherit.elastic
    assert recorded.steps == 2 and elastic.inherit.record()["elastic"] == recorded.to_attrs()
    assert len(list(tmp_path.glob("t-elastic-*.safetensors"))) == 1
    again = elastic_inputs(inputs, tmp_path)  # from the cache: the same weights
    assert all(torch.equal(again.inherit.state[k], elastic.inherit.state[k]) for k in elastic.inherit.state)
    student = _student(tokenizer, StudentArch(num_layers=2, num_heads=2, head_dim=8, ffn_ratio=1))
    record = initialise(student, elastic)
    assert record["init"] == "inherited" and record["elastic"] is True
    word = elastic.inherit.state["bert.embeddings.word_embeddings.weight"]
    assert torch.equal(student.state_dict()["bert.embeddings.word_embeddings.weight"], word[:, :16])
    off = replace(inputs, config=build_config({**raw, "student": {"space": SPACE.model_dump()}}))
    assert elastic_inputs(off, tmp_path) is off


def test_a_rerun_that_changes_the_elastic_settings_is_refused():
    before = config_fingerprint(build_config({}))
    after = config_fingerprint(build_config({"student": {"inherit": {"elastic": {"enabled": True}}}}))
    assert fingerprint_differences(before, after) == ["student.inherit.elastic.enabled false → true"]
