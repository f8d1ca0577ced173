"""The public API: ``import kdnas`` names its functions and stays light; the README's example runs as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import kdnas
from kdnas.config import dump_config

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_example() -> str:
    """The fenced python block of the README's "Python API" section."""
    section = README.read_text().split("\n## Python API\n", 1)[1].split("\n## ", 1)[0]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_api_is_what_all_lists():
    assert sorted(kdnas.__all__) == sorted(kdnas._HOMES)
    assert all(callable(getattr(kdnas, name)) for name in kdnas.__all__)
    assert set(kdnas.__all__) <= set(dir(kdnas))
    with pytest.raises(AttributeError, match="no attribute 'no_such_function'"):
        kdnas.no_such_function  # noqa: B018


def test_load_config_takes_a_dict_and_overrides_without_changing_the_dict():
    raw = {"search": {"n_trials": 3}}
    config = kdnas.load_config(raw, ["search.n_trials=5", "kd.temperature=4"])
    assert config.search.n_trials == 5 and config.kd.temperature == 4 and raw == {"search": {"n_trials": 3}}


@pytest.mark.slow
def test_the_readme_example_runs_on_the_tiny_search(searched, monkeypatch, tmp_path, capsys):
    """The example's config file is swapped for the session's tiny search (already run: resuming it runs nothing)."""
    config, study = searched
    real = kdnas.load_config
    monkeypatch.setattr(kdnas, "load_config", lambda source=None, overrides=(): real(dump_config(config), overrides))
    monkeypatch.chdir(tmp_path)
    exec(compile(readme_example(), str(README), "exec"), {"__name__": "readme_example"})
    front = kdnas.pareto_front(study)
    printed = capsys.readouterr().out.strip().splitlines()
    assert [line.split()[1] for line in printed if line.startswith("trial ")] == [str(t.number) for t in front]
    exports = tmp_path / "runs" / "kdnas-demo" / "export"
    best = kdnas.best_under_budget(study)
    for name in ("knee", f"trial-{best.number:04d}"):
        assert (exports / name / "model.safetensors").is_file() and (exports / name / "kdnas_trial.json").is_file()
    assert (tmp_path / "runs" / "kdnas-demo" / "report" / "report.html").is_file()
