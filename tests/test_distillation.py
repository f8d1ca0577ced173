"""Intermediate KD, EMD layer mapping, schedules and the sampled KD recipe, against hand computations."""

import copy

import numpy as np
import optuna
import pytest
import torch

from conftest import tiny_bert
from kdnas.config import IntermediateConfig, KDConfig, KDSpaceConfig, Ramp, SpaceConfig
from kdnas.distill.distillation import Distillation
from kdnas.distill.emd import EMDLayerMapping, inverse_cost_weights, transport_flow
from kdnas.distill.intermediate import (
    IntermediateDistiller,
    attention_mse,
    attention_scores,
    config_layer_map,
    kd_layer_map,
    masked_mse,
)
from kdnas.distill.schedules import value_at
from kdnas.student.space import SearchSpace, kd_recipe
from kdnas.teachers.loading import load_tokenizer
from kdnas.teachers.roles import shares_tokenizer


@pytest.mark.parametrize(
    ("kind", "m", "n", "expected"),
    [
        ("uniform", 2, 6, [2, 5]),
        ("uniform", 4, 6, [1, 2, 4, 5]),
        ("uniform", 3, 3, [0, 1, 2]),
        ("skip", 2, 6, [1, 3]),
        ("skip", 4, 6, [1, 3, 5, 5]),
        ("last", 2, 6, [4, 5]),
        ("last", 1, 6, [5]),
        ("final", 3, 6, [None, None, 5]),
        ("final", 1, 6, [5]),
        ([0, 5], 2, 6, [0, 5]),
    ],
)
def test_layer_maps_are_0_based(kind, m, n, expected):
    assert kd_layer_map(kind, m, n) == expected


def test_explicit_layer_map_is_checked_and_the_configs_counts_from_1():
    with pytest.raises(ValueError, match="must list 2 teacher layer indices between 0 and 5"):
        kd_layer_map([0, 6], 2, 6)
    assert config_layer_map([1, 6]) == [0, 5] and config_layer_map("skip") == "skip"


def test_a_fixed_layer_map_is_recorded_as_the_config_writes_it():
    teacher = tiny_bert(layers=3)
    distiller = IntermediateDistiller(
        IntermediateConfig(enabled=True, layer_map=[1, 3]),
        student_hidden=16,
        student_layers=2,
        teachers=[("t", teacher)],
    )
    assert distiller.teachers[0].layers == [0, 2] and distiller.record() == {"t": {"layer_map": [1, 3]}}


def test_masked_mse_ignores_padding():
    student = torch.tensor([[[1.0, 2.0], [5.0, 5.0]]])
    teacher = torch.tensor([[[0.0, 0.0], [0.0, 0.0]]])
    mask = torch.tensor([[1, 0]])
    # only the first position counts: (1² + 2²) / 2 dims
    assert masked_mse(student, teacher, mask).item() == pytest.approx(2.5)


def _probs(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return torch.softmax(scores + (1 - mask[:, None, None, :].float()) * -1e4, dim=-1)


def test_attention_mse_compares_pre_softmax_scores_of_unmasked_pairs():
    torch.manual_seed(0)
    mask = torch.tensor([[1, 1, 1, 0]])
    scores = torch.randn(1, 1, 4, 4)
    shifted = scores + torch.randn(1, 1, 4, 1) * 3  # softmax cannot see a per-row shift
    assert attention_mse(_probs(scores, mask), _probs(shifted, mask), mask).item() == pytest.approx(0.0, abs=1e-8)

    other = torch.randn(1, 1, 4, 4)
    # by hand: centre each valid row over the 3 valid keys, then the mean squared difference over 3×3 pairs
    a, b = scores[0, 0, :3, :3], other[0, 0, :3, :3]
    a, b = a - a.mean(-1, keepdim=True), b - b.mean(-1, keepdim=True)
    expected = ((a - b) ** 2).mean()
    mse = attention_mse(_probs(scores, mask), _probs(other, mask), mask)
    assert mse.item() == pytest.approx(expected.item(), rel=1e-4)


def test_attention_scores_average_heads_so_head_counts_may_differ():
    mask = torch.ones(1, 3, dtype=torch.long)
    two_heads = torch.randn(1, 2, 3, 3)
    one_head = two_heads.mean(dim=1, keepdim=True)
    two, one = _probs(two_heads, mask), _probs(one_head, mask)
    assert torch.allclose(attention_scores(two, mask), attention_scores(one, mask), atol=1e-5)
    assert attention_mse(_probs(two_heads, mask), _probs(one_head, mask), mask).item() == pytest.approx(0.0, abs=1e-9)


def test_transport_flow_marginals_equal_layer_weights():
    rng = np.random.default_rng(0)
    student_w, teacher_w = rng.dirichlet(np.ones(3)), rng.dirichlet(np.ones(5))
    flow = transport_flow(student_w, teacher_w, torch.rand(3, 5))
    assert np.allclose(flow.sum(dim=1).numpy(), student_w)
    assert np.allclose(flow.sum(dim=0).numpy(), teacher_w)


def test_inverse_cost_weights_by_hand():
    flow = torch.tensor([[0.5, 0.0], [0.0, 0.5]], dtype=torch.float64)
    cost = torch.tensor([[1.0, 9.0], [9.0, 3.0]], dtype=torch.float64)
    # C̄ = (ΣF·D)/w = [0.5/0.5, 1.5/0.5] = [1, 3]; w̄ = ΣC̄/C̄ = [4, 4/3]; normalised [0.75, 0.25]
    weights = inverse_cost_weights(flow, cost, np.array([0.5, 0.5]), dim=1)
    assert np.allclose(weights, [0.75, 0.25])


def test_emd_loss_is_flow_weighted_cost_and_updates_weights():
    mapping = EMDLayerMapping(2, 2)
    cost = torch.tensor([[1.0, 9.0], [9.0, 3.0]], requires_grad=True)
    loss = mapping.loss({"hidden": cost})
    assert loss.item() == pytest.approx(0.5 * 1 + 0.5 * 3)  # uniform weights: flow = diag(0.5)
    loss.backward()
    assert torch.allclose(cost.grad, torch.tensor([[0.5, 0.0], [0.0, 0.5]]))  # the flow is a constant
    assert np.allclose(mapping.student_weights["hidden"], [0.75, 0.25])
    assert np.allclose(mapping.teacher_weights["hidden"], [0.75, 0.25])


def test_emd_weights_of_kinds_are_averaged_unless_separate():
    costs = {"hidden": torch.tensor([[1.0, 9.0], [9.0, 3.0]]), "attention": torch.tensor([[3.0, 9.0], [9.0, 1.0]])}
    shared, separate = EMDLayerMapping(2, 2), EMDLayerMapping(2, 2, separate=True)
    shared.loss(costs)
    separate.loss(costs)
    assert np.allclose(shared.student_weights["hidden"], [0.5, 0.5])
    assert np.allclose(separate.student_weights["hidden"], [0.75, 0.25])
    assert np.allclose(separate.student_weights["attention"], [0.25, 0.75])


def test_emd_loss_decreases_on_a_toy_pair():
    torch.manual_seed(0)
    teacher = [torch.randn(4, 5, 8) for _ in range(3)]
    student = [torch.nn.Parameter(torch.randn(4, 5, 8)) for _ in range(2)]
    mask = torch.ones(4, 5)
    mapping = EMDLayerMapping(2, 3)
    optimizer = torch.optim.Adam(student, lr=0.05)
    losses = []
    for _ in range(60):
        cost = torch.stack([torch.stack([masked_mse(s, t, mask) for t in teacher]) for s in student])
        loss = mapping.loss({"hidden": cost})
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.3 * losses[0]


def _batch():
    torch.manual_seed(1)
    return {
        "input_ids": torch.randint(1, 50, (3, 6)),
        "attention_mask": torch.tensor([[1] * 6, [1] * 4 + [0] * 2, [1] * 3 + [0] * 3]),
    }


@pytest.mark.parametrize("mapping", ["uniform", "emd"])
def test_identical_student_and_teacher_give_zero_intermediate_loss(mapping):
    teacher = tiny_bert()
    student = copy.deepcopy(teacher)
    distiller = IntermediateDistiller(
        IntermediateConfig(enabled=True, layer_map=mapping),
        student_hidden=16,
        student_layers=2,
        teachers=[("t", teacher)],
    )
    with torch.no_grad():
        distiller.projections["t"].weight.copy_(torch.eye(16))
        distiller.projections["t"].bias.zero_()
    student.set_attn_implementation("eager")
    batch = _batch()
    out = student(**batch, output_hidden_states=True, output_attentions=True)
    assert distiller(out, batch).item() == pytest.approx(0.0, abs=1e-6)


def test_final_map_teaches_only_the_last_layer_by_the_teachers_last():
    teacher, student = tiny_bert(hidden=24, layers=3, heads=3), tiny_bert(hidden=16, layers=2, heads=2, seed=5)
    distiller = IntermediateDistiller(
        IntermediateConfig(enabled=True, layer_map="final", attention=0.0, embedding=0.0),
        student_hidden=16,
        student_layers=2,
        teachers=[("t", teacher)],
    )
    batch = _batch()
    out = student(**batch, output_hidden_states=True)
    loss = distiller(out, batch)
    with torch.no_grad():
        taught = teacher(**batch, output_hidden_states=True).hidden_states[3]
        expected = masked_mse(distiller.projections["t"](out.hidden_states[2]), taught, batch["attention_mask"])
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    loss.backward()  # the first layer learns only through the last one's input
    assert student.bert.encoder.layer[0].output.dense.weight.grad.abs().sum() > 0
    assert distiller.record() == {"t": {"layer_map": [None, 3]}}


def test_intermediate_loss_trains_student_and_projection_not_teacher():
    teacher, student = tiny_bert(hidden=24, layers=3, heads=3), tiny_bert(hidden=16, layers=2, heads=2, seed=5)
    distiller = IntermediateDistiller(
        IntermediateConfig(enabled=True, layer_map="emd"),
        student_hidden=16,
        student_layers=2,
        teachers=[("t", teacher)],
    )
    student.set_attn_implementation("eager")
    batch = _batch()
    out = student(**batch, output_hidden_states=True, output_attentions=True)
    distiller(out, batch).backward()
    assert student.bert.encoder.layer[0].attention.self.query.weight.grad.abs().sum() > 0
    assert distiller.projections["t"].weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in teacher.parameters())
    assert [p for p in distiller.parameters()] == list(distiller.projections.parameters())  # teachers not registered
    record = distiller.record()["t"]
    assert record["layer_map"] == "emd" and len(record["emd_weights"]["hidden"]["teacher"]) == 3


def test_schedules_ramp_linearly():
    ramp = Ramp(start=4.0, end=1.0)
    assert [value_at(ramp, p) for p in (0.0, 0.5, 1.0, 2.0)] == [4.0, 2.5, 1.0, 1.0]
    assert value_at(2.0, 0.7) == 2.0


def test_distillation_follows_its_alpha_schedule():
    student = tiny_bert()
    batch = _batch()
    labels = torch.tensor([0, 1, 1])
    teacher_logits = torch.randn(2, 3, 2)
    kd = KDConfig(alpha=Ramp(start=1.0, end=0.0), temperature=2.0, combiner="mean")
    loss = Distillation(kd, teacher_logits)
    index = torch.arange(3)
    ce = torch.nn.functional.cross_entropy(student(**batch).logits, labels)
    assert loss(student, batch, labels, index, 0.0).item() == pytest.approx(ce.item(), rel=1e-6)  # α = 1: CE only
    assert loss(student, batch, labels, index, 1.0).item() != pytest.approx(ce.item(), rel=1e-3)


def test_kd_recipe_is_sampled_with_fixed_choices_and_applied():
    kd = KDConfig(intermediate=IntermediateConfig(hidden=2.0))
    space = SearchSpace(
        SpaceConfig(),
        KDSpaceConfig(
            combiner=["mean", "gradient"], temperature=[1.0, 4.0], alpha=[0.0, 0.5], intermediate=["off", "emd"]
        ),
    )
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(40):
        trial = study.ask()
        params = space.suggest(trial)
        recipe = kd_recipe(kd, params)
        assert recipe.combiner == params["kd_combiner"] and recipe.temperature == params["kd_temperature"]
        assert recipe.alpha == params["kd_alpha"]
        assert recipe.intermediate.enabled == (params["kd_intermediate"] == "emd")
        assert recipe.intermediate.hidden == 2.0  # the fixed settings stay
        seen.add(params["kd_intermediate"])
        study.tell(trial, [0.0, 1.0])
    assert seen == {"off", "emd"}
    assert kd_recipe(kd, {"num_layers": 1}) is kd


def test_only_teachers_with_the_students_tokenizer_share_it():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    minilm = load_tokenizer("minilm")
    texts = ["a fine film", "dull and long"]
    assert shares_tokenizer(minilm, AutoTokenizer.from_pretrained(minilm.name_or_path), texts)
    assert shares_tokenizer(minilm, AutoTokenizer.from_pretrained(minilm.name_or_path), [("a", "b")])
    word_level = Tokenizer(models.WordLevel({"[UNK]": 0, "a": 1}, unk_token="[UNK]"))
    word_level.pre_tokenizer = pre_tokenizers.Whitespace()
    other = PreTrainedTokenizerFast(tokenizer_object=word_level, unk_token="[UNK]")
    assert not shares_tokenizer(minilm, other, texts)


def test_emd_layer_weights_survive_a_checkpoint(tmp_path):
    from kdnas.tune.checkpoint import load_state, save_state

    def distillation(teacher):
        inter = IntermediateDistiller(
            IntermediateConfig(enabled=True, layer_map="emd"),
            student_hidden=16,
            student_layers=2,
            teachers=[("t", teacher)],
        )
        return Distillation(
            KDConfig(combiner="mean", intermediate=IntermediateConfig(enabled=True, layer_map="emd")),
            torch.randn(1, 3, 2),
            inter,
        )

    teacher, student = tiny_bert(hidden=24, layers=3, heads=3), tiny_bert(hidden=16, layers=2, heads=2, seed=5)
    student.set_attn_implementation("eager")
    first = distillation(teacher)
    first(student, _batch(), torch.tensor([0, 1, 1]), torch.arange(3), 0.0)
    save_state({"loss": first.state()}, tmp_path)
    resumed = distillation(teacher)
    resumed.load_state(load_state(tmp_path)["loss"])
    before, after = first.intermediate.teachers[0].emd, resumed.intermediate.teachers[0].emd
    assert not np.allclose(before.student_weights["hidden"], 0.5)  # the step moved them
    for kind in ("hidden", "attention"):
        assert np.allclose(after.student_weights[kind], before.student_weights[kind])
        assert np.allclose(after.teacher_weights[kind], before.teacher_weights[kind])


def test_exposed_attention_maps_are_dropout_free_in_training_and_restored():
    from kdnas.distill.intermediate import expose_attention

    student = tiny_bert().train()  # attention dropout 0.1 would zero and rescale entries of the maps
    batch = _batch()
    restore = expose_attention(student)
    maps = student(**batch, output_attentions=True).attentions[0]
    valid = batch["attention_mask"][:, None, None, :].expand_as(maps).bool()
    assert (maps[valid] > 0).all() and torch.allclose(maps.sum(-1), torch.ones_like(maps.sum(-1)), atol=1e-5)
    restore()
    assert student.config._attn_implementation == "sdpa"
    assert student.bert.encoder.layer[0].attention.self.dropout.p == 0.1


def test_attention_kl_by_hand():
    from kdnas.distill.intermediate import attention_kl

    mask = torch.tensor([[1, 1, 0]])
    teacher = torch.tensor([[[[0.5, 0.5, 0.0], [0.9, 0.1, 0.0], [0.3, 0.3, 0.4]]]])  # last row: a padded query
    heads = torch.tensor(
        [[[[0.2, 0.8, 0.0], [0.5, 0.5, 0.0], [1.0, 0.0, 0.0]], [[0.6, 0.4, 0.0], [0.7, 0.3, 0.0], [0.0, 1.0, 0.0]]]]
    )  # averages to [0.4, 0.6], [0.6, 0.4]
    kl_rows = [0.5 * np.log(0.5 / 0.4) + 0.5 * np.log(0.5 / 0.6), 0.9 * np.log(0.9 / 0.6) + 0.1 * np.log(0.1 / 0.4)]
    assert attention_kl(heads, teacher, mask).item() == pytest.approx(np.mean(kl_rows), rel=1e-5)
    assert attention_kl(teacher, teacher, mask).item() == pytest.approx(0.0, abs=1e-7)
