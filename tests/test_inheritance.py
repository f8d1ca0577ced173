"""Students sliced out of a teacher, the teacher's importance ranking, the transfer set and its augmentation."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import BertForSequenceClassification

from conftest import students_vocabulary_bert
from kdnas.config import ConfigError, build_config
from kdnas.data import load_task
from kdnas.data.augment import augment_texts
from kdnas.data.transfer import load_transfer_texts
from kdnas.distill.losses import kd_loss
from kdnas.student import StudentArch
from kdnas.student.batches import batch_at, encode
from kdnas.student.inheritance import inherit, inheritance_layer_map, inheritance_source
from kdnas.teachers.importance import activation_importance
from kdnas.teachers.loading import load_tokenizer
from kdnas.tune.trial_inputs import learning_rate

TEXTS = [
    "the film was not very good",
    "although the plot was dull , the acting was wonderful",
    "it is not true that the soundtrack was bad",
    "the cast felt truly awful and the story was boring",
] * 4


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer("minilm")


@pytest.fixture(scope="module")
def teacher(tokenizer) -> BertForSequenceClassification:
    """A BERT teacher of 4 layers, width 32 (4 heads of 8), FFN 64, with the students' vocabulary."""
    return students_vocabulary_bert(len(tokenizer))


@pytest.fixture(scope="module")
def calibration(tokenizer):
    return encode(tokenizer, TEXTS, [0, 1] * 8, 24)


@pytest.fixture(scope="module")
def source(teacher, calibration):
    return inheritance_source("t", teacher, activation_importance(teacher, calibration), "uniform")


def _student(tokenizer, **arch) -> BertForSequenceClassification:
    torch.manual_seed(0)
    return StudentArch(**arch).build(tokenizer, num_labels=2, max_positions=24).eval()


def test_layer_rules():
    assert inheritance_layer_map(6, 12, "uniform") == [0, 2, 4, 7, 9, 11]  # DistilBERT's choice
    assert inheritance_layer_map(3, 6, "uniform") == [0, 3, 5] and inheritance_layer_map(1, 6, "uniform") == [0]
    assert inheritance_layer_map(2, 6, "first") == [0, 1] and inheritance_layer_map(2, 6, "last") == [4, 5]
    assert inheritance_layer_map(2, 4, "importance", torch.tensor([0.3, 0.1, 0.5, 0.2])) == [0, 2]
    with pytest.raises(ValueError):
        inheritance_layer_map(7, 6, "uniform")


def test_the_skip_rule_takes_the_top_of_equal_blocks_as_tinybert_maps_layers():
    # TinyBERT's g(m) = m·T/S, 1-based: student layer m learns from teacher layer m·T/S
    for student, teacher in [(2, 6), (3, 6), (4, 12), (6, 12), (4, 6), (1, 6), (6, 6)]:
        expected = [math.ceil(m * teacher / student) - 1 for m in range(1, student + 1)]
        assert inheritance_layer_map(student, teacher, "skip") == expected
    assert inheritance_layer_map(2, 6, "skip") == [2, 5] and inheritance_layer_map(4, 12, "skip") == [2, 5, 8, 11]
    assert inheritance_layer_map(4, 6, "skip") == [1, 2, 4, 5] and inheritance_layer_map(1, 6, "skip") == [5]
    assert inheritance_layer_map(6, 6, "skip") == list(range(6))


def test_importance_has_one_score_per_part(teacher, source):
    importance = source.importance
    assert importance.layers.shape == (4,) and importance.heads.shape == (4, 4)
    assert importance.neurons.shape == (4, 64) and importance.channels.shape == (32,)
    assert all(bool((t > 0).all()) for t in importance.tensors().values())
    assert len(set(importance.channels.tolist())) > 1


def test_a_student_of_the_teachers_full_shape_inherits_it_exactly(tokenizer, teacher, source, calibration):
    student = _student(tokenizer, num_layers=4, num_heads=4, head_dim=8, ffn_ratio=2)
    record = inherit(student, source)
    assert record["init"] == "inherited" and record["random"] == {} and record["layers"] == [0, 1, 2, 3]
    batch = batch_at(calibration, torch.arange(8), torch.device("cpu"))
    with torch.no_grad():
        assert torch.equal(student(**batch).logits, teacher(**batch).logits)


def test_a_sliced_student_holds_the_selected_rows_and_columns(tokenizer, teacher, source):
    student = _student(tokenizer, num_layers=2, num_heads=2, head_dim=8, ffn_ratio=2)  # width 16, FFN 32
    record = inherit(student, source)
    importance = source.importance
    channels = importance.channels.argsort(descending=True)[:16].sort().values
    assert record["init"] == "inherited" and record["layers"] == [0, 3]
    assert record["hidden_channels"] == 16 and record["ffn_neurons"] == 32
    emb, t_emb = student.bert.embeddings, teacher.bert.embeddings
    assert torch.equal(emb.word_embeddings.weight, t_emb.word_embeddings.weight[:, channels])
    assert torch.equal(emb.position_embeddings.weight, t_emb.position_embeddings.weight[:24, channels])
    assert torch.equal(student.classifier.weight, teacher.classifier.weight[:, channels])
    for i, j in enumerate(record["layers"]):
        ours, theirs = student.bert.encoder.layer[i], teacher.bert.encoder.layer[j]
        heads = importance.heads[j].argsort(descending=True)[:2].sort().values
        assert record["heads"][i] == heads.tolist()
        rows = torch.cat([torch.arange(h * 8, h * 8 + 8) for h in heads.tolist()])
        neurons = importance.neurons[j].argsort(descending=True)[:32].sort().values
        assert torch.equal(ours.attention.self.query.weight, theirs.attention.self.query.weight[rows][:, channels])
        assert torch.equal(ours.attention.output.dense.weight, theirs.attention.output.dense.weight[channels][:, rows])
        assert torch.equal(ours.intermediate.dense.weight, theirs.intermediate.dense.weight[neurons][:, channels])
        assert torch.equal(ours.output.dense.bias, theirs.output.dense.bias[channels])
        assert torch.equal(ours.output.LayerNorm.weight, theirs.output.LayerNorm.weight[channels])


def test_what_cannot_inherit_stays_random_with_the_reason(tokenizer, source):
    student = _student(tokenizer, num_layers=1, num_heads=2, head_dim=4, ffn_ratio=20)  # head size 4, FFN 160
    before = student.bert.encoder.layer[0].attention.self.query.weight.clone()
    record = inherit(student, source)
    assert record["init"] == "partial"
    assert record["random"] == {"attention": "head size 4, the teacher 8", "ffn": "FFN size 160, the teacher 64"}
    assert torch.equal(student.bert.encoder.layer[0].attention.self.query.weight, before)
    too_wide = inherit(_student(tokenizer, num_layers=1, num_heads=8, head_dim=8, ffn_ratio=1), source)
    assert too_wide == {
        "teacher": "t",
        "rule": "uniform",
        "init": "random",
        "random": {"all": "student width 64 exceeds teacher 't''s 32"},
    }
    too_deep = inherit(_student(tokenizer, num_layers=5, num_heads=2, head_dim=8, ffn_ratio=1), source)
    assert too_deep["init"] == "partial" and too_deep["random"] == {"encoder": "5 layers, teacher 't' only 4"}


def test_learning_rate_follows_the_init_unless_set_or_sampled():
    config = build_config({})
    assert learning_rate(config, {}, {"init": "inherited"}) == 6e-4
    assert learning_rate(config, {}, {"init": "partial"}) == 6e-4
    assert learning_rate(config, {}, {"init": "random"}) == 1e-3
    assert learning_rate(build_config({"training": {"learning_rate": 5e-4}}), {}, {"init": "random"}) == 5e-4
    assert learning_rate(config, {"learning_rate": 2e-4}, {"init": "random"}) == 2e-4


def test_old_warm_start_configs_become_inherit():
    config = build_config({"student": {"warm_start": {"teacher": "minilm", "layers": "last"}}})
    assert config.student.inherit.enabled and config.student.inherit.teacher == "minilm"
    assert config.student.inherit.layers == "last"
    assert not build_config({"student": {"warm_start": {"teacher": None}}}).student.inherit.enabled
    with pytest.raises(ConfigError, match="old name of student.inherit"):
        build_config({"student": {"warm_start": {}, "inherit": {}}})


def test_unlabelled_rows_take_kd_only():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0]], requires_grad=True)
    target = torch.tensor([[0.5, 0.5], [0.5, 0.5]])
    labels = torch.tensor([0, -100])
    mixed = kd_loss(logits, target, labels, alpha=0.5, temperature=1.0)
    hard = torch.nn.functional.cross_entropy(logits[:1], labels[:1])
    soft = torch.nn.functional.kl_div(torch.log_softmax(logits, -1), target, reduction="batchmean")
    assert torch.allclose(mixed, 0.5 * hard + 0.5 * soft)
    only_transfer = kd_loss(logits, target, torch.tensor([-100, -100]), alpha=0.5, temperature=1.0)
    assert torch.isfinite(only_transfer) and torch.allclose(only_transfer, 0.5 * soft)


def test_augmentation_is_deterministic_and_swaps_words_for_neighbours(tokenizer):
    embeddings = torch.randn(len(tokenizer), 16, generator=torch.Generator().manual_seed(0))
    texts = ["the acting was wonderful", ("the plot was dull", "the film was good")]
    first = augment_texts(texts, tokenizer, embeddings, copies=3, replace_prob=0.5, neighbours=4, seed=7)
    again = augment_texts(texts, tokenizer, embeddings, copies=3, replace_prob=0.5, neighbours=4, seed=7)
    other = augment_texts(texts, tokenizer, embeddings, copies=3, replace_prob=0.5, neighbours=4, seed=8)
    assert first == again and first != other and len(first) == 6
    assert isinstance(first[1], tuple) and isinstance(first[0], str)
    assert any(a != texts[0] for a in first[0::2]), "some words are replaced"
    assert all(len(a.split()) == len(texts[0].split()) for a in first[0::2]), "word for word"
    assert augment_texts(texts, tokenizer, embeddings, copies=0, replace_prob=0.5, neighbours=4, seed=7) == []


def test_transfer_texts_come_from_files_and_the_demo_never_from_validation(tmp_path):
    (tmp_path / "more.csv").write_text("sentence\nan unlabelled sentence\nanother one\n")
    raw = {"data": {"demo_train_size": 20, "demo_eval_size": 10, "transfer": {"demo_size": 30}}}
    task = load_task(build_config(raw).data)
    transfer = load_transfer_texts(build_config(raw).data, task)
    assert len(transfer) == 30 and transfer.sources == {"demo": 30}
    assert not set(transfer.texts) & set(task.texts("eval"))
    assert transfer.fingerprint() == load_transfer_texts(build_config(raw).data, task).fingerprint()
    files = {
        "data": {
            "demo_train_size": 20,
            "demo_eval_size": 10,
            "transfer": {"files": [str(tmp_path / "more.csv")], "demo_size": 0},
        }
    }
    found = load_transfer_texts(build_config(files).data, task)
    assert found.texts == ["an unlabelled sentence", "another one"]


def test_training_rows_left_out_by_max_train_samples_can_join_the_transfer_set():
    raw = {"data": {"demo_train_size": 40, "demo_eval_size": 10, "max_train_samples": 15}}
    raw["data"]["transfer"] = {"demo_size": 0, "unused_train_rows": True}
    cfg = build_config(raw).data
    task, every_row = load_task(cfg), load_task(cfg.model_copy(update={"max_train_samples": None}))
    transfer = load_transfer_texts(cfg, task)
    assert transfer.sources == {"unused_train_rows": 25}
    assert sorted(transfer.texts + task.texts("train")) == sorted(every_row.texts("train"))
    assert load_transfer_texts(cfg.model_copy(update={"max_train_samples": None}), every_row).texts == []


def test_learned_teacher_weights_down_weight_the_teacher_that_explains_the_labels_worse():
    from kdnas.distill.combiners import learned_teacher_weights

    labels = torch.tensor([0, 1, 0, 1, -100, -100])
    good = torch.tensor([[4.0, 0.0], [0.0, 4.0], [4.0, 0.0], [0.0, 4.0], [0.0, 0.0], [0.0, 0.0]])
    noisy = torch.tensor([[0.0, 1.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [9.0, 0.0], [9.0, 0.0]])
    weights = learned_teacher_weights(torch.stack([good, noisy]), labels)
    assert weights.sum().item() == pytest.approx(1.0) and weights[0] > 0.95
    twins = learned_teacher_weights(torch.stack([good, good]), labels)
    assert twins.tolist() == pytest.approx([0.5, 0.5])
    assert learned_teacher_weights(good.unsqueeze(0), labels).tolist() == [1.0]


def test_repeated_texts_of_transfer_files_are_dropped_and_counted(tmp_path):
    (tmp_path / "a.csv").write_text("sentence\none\ntwo\none\n")
    (tmp_path / "b.csv").write_text("sentence\ntwo\nthree\n")
    raw = {"data": {"demo_train_size": 20, "demo_eval_size": 10}}
    raw["data"]["transfer"] = {"files": [str(tmp_path / "a.csv"), str(tmp_path / "b.csv")], "demo_size": 0}
    cfg = build_config(raw).data
    found = load_transfer_texts(cfg, load_task(cfg))
    assert found.texts == ["one", "two", "three"]
    assert found.sources == {"duplicates_dropped": 2, f"file:{tmp_path / 'a.csv'}": 2, f"file:{tmp_path / 'b.csv'}": 1}
