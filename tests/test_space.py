import json

import optuna
import pytest
import torch
from transformers import BertForSequenceClassification

from kdnas.config import SpaceConfig
from kdnas.student import SearchSpace, StudentArch
from kdnas.teachers.loading import load_tokenizer


def test_every_sampled_arch_is_valid_and_choices_are_fixed():
    space = SearchSpace(
        SpaceConfig(depth={"min": 1, "max": 6}, heads=[2, 3, 4, 6], head_dim=[16, 24, 64], ffn_ratio=[1, 2, 4])
    )
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(300):
        trial = study.ask()
        arch = StudentArch.from_dict(space.suggest(trial))
        assert 1 <= arch.num_layers <= 6
        if arch not in seen and len(seen) % 10 == 0:  # a sample of them built and run: HF accepts the shape
            model = BertForSequenceClassification(arch.hf_config(vocab_size=100, num_labels=2, max_positions=32))
            out = model(input_ids=torch.ones(1, 8, dtype=torch.long), output_hidden_states=True)
            assert out.hidden_states[-1].shape == (1, 8, arch.num_heads * arch.head_dim)
            assert len(out.hidden_states) == arch.num_layers + 1
        seen.add(arch)
        study.tell(trial, [0.0, 1.0])
    # categorical distributions never depend on other parameters (TPE needs fixed choice lists)
    choices = {t.distributions["num_heads"].choices for t in study.trials}
    assert choices == {(2, 3, 4, 6)}
    assert len(seen) > 100


def test_arch_json_round_trip_and_summary():
    arch = StudentArch(num_layers=2, num_heads=4, head_dim=32, ffn_ratio=4)
    assert arch.summary == "L2-H128-A4-F512"
    assert StudentArch.from_dict(json.loads(arch.to_json())) == arch
    with pytest.raises(ValueError, match="num_layers"):
        StudentArch(num_layers=0, num_heads=4, head_dim=32, ffn_ratio=4)
    with pytest.raises(ValueError, match="missing 'ffn_ratio'"):
        StudentArch.from_dict({"num_layers": 1, "num_heads": 1, "head_dim": 8})


def test_student_builds_as_hf_bert_and_trains_a_step():
    tokenizer = load_tokenizer("minilm")
    arch = StudentArch(num_layers=2, num_heads=2, head_dim=16, ffn_ratio=2)
    model = arch.build(tokenizer, num_labels=3, max_positions=64)
    cfg = model.config
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads, cfg.intermediate_size) == (2, 32, 2, 64)
    assert cfg.vocab_size == len(tokenizer)
    batch = tokenizer(["a fine film", "not good at all"], return_tensors="pt", padding=True)
    labels = torch.tensor([1, 0])
    before = [p.detach().clone() for p in model.parameters()]
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    loss = model(**batch, labels=labels).loss
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_encoder_flops_formula():
    arch = StudentArch(num_layers=1, num_heads=1, head_dim=2, ffn_ratio=2)  # d=2, f=4
    # n=3: macs = 3*(4*4 + 2*2*4) + 2*9*2 = 3*32 + 36 = 132; flops = 2 * 132
    assert arch.encoder_flops(3) == 264
