import pytest
import torch

from conftest import tiny_raw
from kdnas.config import build_config
from kdnas.data import load_task
from kdnas.teachers import logits as logits_mod
from kdnas.teachers.fitting import fit_teachers
from kdnas.teachers.loading import load_teacher


def test_fit_then_logits_are_cached_once_per_study(tmp_path, monkeypatch):
    config = build_config(tiny_raw(tmp_path / "run"))
    task = load_task(config.data)
    records = fit_teachers(config, task)
    assert [r.name for r in records] == ["minilm", "gpt2"]
    assert all(0.0 <= r.value <= 1.0 for r in records)
    assert all(r.ran_on.device == "cpu" and not r.ran_on.ray_task for r in records)  # in this process
    assert all(r.ran_on.precision == "fp32" for r in records)  # training.precision auto, on the CPU
    assert (tmp_path / "run/teachers/minilm/model.safetensors").is_file()
    assert not list((tmp_path / "run/teachers").rglob("*.bin"))
    # already fitted for this task: nothing refitted
    assert fit_teachers(config, task) == []

    calls = []
    real = logits_mod.predict_logits
    monkeypatch.setattr(logits_mod, "predict_logits", lambda *a, **k: calls.append(1) or real(*a, **k))
    teacher = load_teacher(config, config.teachers[0], task.num_labels)
    cache = tmp_path / "cache"
    first = logits_mod.cached_logits(teacher, task, "train", 24, cache, torch.device("cpu"))
    assert calls == [1] and first.shape == (len(task.train), 2)
    second = logits_mod.cached_logits(teacher, task, "train", 24, cache, torch.device("cpu"))
    assert calls == [1], "a cache hit must not run the teacher again"
    assert torch.equal(first, second)
    (file,) = cache.iterdir()
    assert logits_mod.ran_on(file)["hostname"] == records[0].ran_on.hostname  # the cache says where
    logits_mod.cached_logits(teacher, task, "train", 16, cache, torch.device("cpu"))
    assert calls == [1, 1], "another tokenisation is another cache key"


def test_teacher_with_other_label_count_is_refused(tmp_path):
    from kdnas.config import ConfigError

    config = build_config(tiny_raw(tmp_path / "run"))
    task = load_task(config.data)
    fit_teachers(config, task)
    with pytest.raises(ConfigError, match="predicts 2 labels but the task has 3"):
        load_teacher(config, config.teachers[1], 3)


def test_logit_cache_write_is_atomic(tmp_path, monkeypatch):
    from safetensors.torch import load_file

    file = tmp_path / "cache" / "minilm-train-key.safetensors"
    old, new = torch.randn(4, 2), torch.randn(4, 2)
    logits_mod.save_atomically({"logits": old}, file)
    assert torch.equal(load_file(file)["logits"], old) and [p.name for p in file.parent.iterdir()] == [file.name]

    def torn(tensors, path, metadata=None):  # a write that dies half-way, as a killed process or a full disk leaves it
        with open(path, "wb") as handle:
            handle.write(b"\x00" * 5)
        raise OSError("No space left on device")

    monkeypatch.setattr(logits_mod, "save_file", torn)
    with pytest.raises(OSError, match="No space"):
        logits_mod.save_atomically({"logits": new}, file)
    assert torch.equal(load_file(file)["logits"], old), "the cache file is never the half-written one"
    assert [p.name for p in file.parent.iterdir()] == [file.name], "the temporary file is removed"
    fresh = tmp_path / "cache" / "gpt2-train-key.safetensors"
    with pytest.raises(OSError):
        logits_mod.save_atomically({"logits": new}, fresh)
    assert not fresh.exists()


def test_logits_computed_before_an_interrupt_are_kept_and_a_rerun_goes_on_from_there(tmp_path, monkeypatch):
    from kdnas.student import StudentArch
    from kdnas.teachers.loading import load_tokenizer

    tokenizer = load_tokenizer("minilm")
    StudentArch(1, 2, 8, 1).build(tokenizer, 2, max_positions=64).save_pretrained(tmp_path / "t")
    tokenizer.save_pretrained(tmp_path / "t")
    config = build_config(tiny_raw(tmp_path / "run", teachers=[{"name": "t", "model": str(tmp_path / "t")}]))
    task = load_task(config.data)
    teacher = load_teacher(config, config.teachers[0], task.num_labels)
    texts = [f"sentence number {i} of the transfer set" for i in range(45)]
    monkeypatch.setattr(logits_mod, "LOGITS_CHUNK", 10)
    real, calls = logits_mod.predict_logits, []

    def interrupted_at_the_third_chunk(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(logits_mod, "predict_logits", interrupted_at_the_third_chunk)
    cache = tmp_path / "cache"
    with pytest.raises(KeyboardInterrupt):
        logits_mod.cached_logits(teacher, task, "transfer", 24, cache, torch.device("cpu"), texts, "c")
    assert len(list(cache.glob(".*.part-*.safetensors"))) == 2
    calls.clear()
    monkeypatch.setattr(logits_mod, "predict_logits", lambda *a, **k: calls.append(1) or real(*a, **k))
    resumed = logits_mod.cached_logits(teacher, task, "transfer", 24, cache, torch.device("cpu"), texts, "c")
    assert len(calls) == 3  # chunks 3, 4 and 5 of 5
    assert list(cache.iterdir()) == [logits_mod.logits_file(teacher, task, "transfer", 24, cache, "c")]
    whole = real(teacher.model, logits_mod.encode(teacher.tokenizer, texts, [0] * 45, 24), device=torch.device("cpu"))
    assert torch.allclose(resumed, whole, atol=1e-5)
