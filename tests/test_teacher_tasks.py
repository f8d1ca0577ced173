"""Teacher steps (fitting, logits, importance) as Ray tasks with search.resources_per_teacher, and where each ran."""

from __future__ import annotations

import sys
import time

import pytest
import ray.cloudpickle
import torch

from conftest import minilm_classifier, tiny_raw
from kdnas.cli import main
from kdnas.config import ConfigError, build_config
from kdnas.devices import assigned_device
from kdnas.resources import ResourcesUnavailable
from kdnas.teachers import tasks

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray workers cannot import tests/


def test_gpu_auto_follows_the_machine_and_a_gpu_it_lacks_is_refused_at_once(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    config = build_config(tiny_raw(tmp_path / "run"))
    assert config.search.resources_per_teacher.gpu == "auto"
    for cuda, gpu, device in ((False, 0.0, "cpu"), (True, 1.0, "cuda")):
        monkeypatch.setattr(torch.cuda, "is_available", lambda cuda=cuda: cuda)
        assert tasks.resources(config) == {"cpu": 1.0, "gpu": gpu}
        assert tasks.local_device(config).type == device
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    started = time.perf_counter()
    code = main(["search", "--output-dir", str(tmp_path / "run"), "--set", "search.resources_per_teacher.gpu=1"])
    assert code == 2 and time.perf_counter() - started < 10
    assert capsys.readouterr().err.strip().splitlines() == [
        "kdnas: error: search.resources_per_teacher.gpu is 1 but this machine has 0 GPU(s) and no Ray cluster is "
        "given (search.ray_address): the teachers run on this machine; set gpu: 0 (or auto) to run them on its CPUs"
    ]
    assert not (tmp_path / "run" / "study.db").exists()


def test_a_task_given_a_gpu_on_a_node_without_cuda_says_so(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert assigned_device(0, tasks.SETTING, "the node running the teacher task").type == "cpu"
    with pytest.raises(ConfigError, match=r"resources_per_teacher.gpu is 0.5 but the node running the teacher task"):
        assigned_device(0.5, tasks.SETTING, "the node running the teacher task")


# --- as Ray tasks (the cluster's way, here on the local Ray) --------------------------------------------------------


def probe(fail: bool = False, *, device: torch.device) -> dict:
    """A teacher step that says what its task was given."""
    if fail:
        raise ConfigError("teacher 'probe': something one line long")
    return {
        "assigned": ray.get_runtime_context().get_assigned_resources(),
        "threads": torch.get_num_threads(),
        "where": tasks.where(device),
    }


@pytest.fixture
def as_on_a_cluster(ray_session, monkeypatch):
    """Teacher steps run as Ray tasks, on this process's local Ray (started as a search starts it)."""
    from kdnas.tune.driver import init_ray

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    init_ray(None)
    monkeypatch.setattr(tasks, "on_cluster", lambda config: True)


@pytest.mark.slow
def test_a_teacher_task_gets_its_resources_records_its_node_and_raises_its_errors(tmp_path, as_on_a_cluster):
    config = build_config(tiny_raw(tmp_path / "run", search={"resources_per_teacher": {"cpu": 0.5, "gpu": "auto"}}))
    seen = tasks.run_step(config, "teacher probe", probe)
    assert seen["assigned"] == {"CPU": 0.5} and seen["threads"] == 1
    node = seen["where"]
    assert node["ray_task"] and node["device"] == "cpu" and node["ip"] and node["hostname"]
    assert node["id"] in {n["NodeID"] for n in ray.nodes() if n["Alive"]}
    with pytest.raises(ConfigError) as raised:  # as raised in the task: one line, not a RayTaskError
        tasks.run_step(config, "teacher probe", probe, True)
    assert str(raised.value) == "teacher 'probe': something one line long"


@pytest.mark.slow
def test_a_teacher_task_no_node_can_hold_is_given_up_after_the_resource_wait(tmp_path, as_on_a_cluster):
    config = build_config(
        tiny_raw(tmp_path / "run", search={"resources_per_teacher": {"gpu": 1}, "resource_wait_s": 1})
    )
    started = time.perf_counter()
    with pytest.raises(ResourcesUnavailable) as raised:
        tasks.run_step(config, "fitting teacher minilm", probe)
    assert time.perf_counter() - started < 10
    assert str(raised.value).startswith(
        "fitting teacher minilm: no node could run the teacher task within search.resource_wait_s (1 s): a teacher "
        "task needs 1 CPU, 1 GPU (search.resources_per_teacher); the largest node has "
    )


@pytest.mark.slow
def test_teachers_fit_rank_and_label_in_ray_tasks_into_output_dir_and_a_rerun_runs_none(
    tmp_path, as_on_a_cluster, monkeypatch
):
    """What a search prepares before its trials, with every teacher step a Ray task: fitting (the scratch teacher),
    logits and the reference (both teachers), importance (MiniLM, used as it is); then all of it from the cache."""
    import kdnas
    from kdnas.tune.inputs import inheritance_record

    raw = tiny_raw(
        tmp_path / "run",
        data={"demo_train_size": 40, "demo_eval_size": 20, "transfer": {"demo_size": 10}},
        student={"inherit": {"calibration_size": 16}},
    )
    raw["teachers"][0] = {"name": "minilm", "model": minilm_classifier(tmp_path / "minilm-classifier")}
    config = build_config(raw)
    students = kdnas.prepare_students(config)
    fit = kdnas.teacher_fit_record(config, "gpt2")
    assert fit.ran_on.ray_task and fit.ran_on.device == "cpu" and fit.seed == config.training.seed
    assert (tmp_path / "run/teachers/gpt2/model.safetensors").is_file()
    references, logits = kdnas.teacher_reference(config, kdnas.load_task(config.data), tmp_path / "run/cache")
    assert logits.shape == (2, 40, 2)
    assert references[0].ran_on.fit is None and references[1].ran_on.fit == fit.ran_on
    assert all(r.ran_on.logits.ray_task for r in references)
    ranked = inheritance_record(students.inherit, tmp_path / "run/cache")["ran_on"]
    assert ranked["ray_task"] and ranked["id"] == fit.ran_on.id

    class NoTask:
        def options(self, **kwargs):
            raise AssertionError("a teacher task ran again")

    monkeypatch.setattr(tasks, "_remote", NoTask())
    again = kdnas.prepare_students(config)
    assert torch.equal(again.teacher_logits, students.teacher_logits)
