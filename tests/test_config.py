import subprocess
import sys

import pytest

from kdnas.config import ConfigError, KDNASConfig, load_config


def test_defaults_are_the_demo_and_overrides_apply(tmp_path):
    config = load_config(None, ["search.n_trials=5", "kd.temperature=4", "student.space.heads=[2, 8]"])
    assert config.search.n_trials == 5 and config.kd.temperature == 4.0
    assert config.student.space.heads == [2, 8]
    assert config.data.source == "demo" and [t.name for t in config.teachers] == ["minilm", "gpt2"]
    assert KDNASConfig().storage_url.startswith("sqlite:///") and KDNASConfig().storage_url.endswith("study.db")
    yaml_file = tmp_path / "c.yaml"
    yaml_file.write_text("search:\n  n_trials: 7\n  storage: postgresql://u:pw@127.0.0.1/test\n")
    config = load_config(yaml_file)
    assert config.search.n_trials == 7 and config.storage_url == "postgresql://u:pw@127.0.0.1/test"


@pytest.mark.parametrize(
    ("yaml_text", "message"),
    [
        ("search:\n  n_trails: 3\n", "search.n_trails: unknown key"),
        ("serch: {}\n", "serch: unknown key"),
        ("search:\n  n_trials: many\n", "search.n_trials: Input should be a valid integer"),
        ("search:\n  n_trials: 0\n", "search.n_trials: Input should be greater than or equal to 1"),
        ("student:\n  space:\n    depth: {min: 4, max: 2}\n", "student.space.depth: min (4) is greater than max (2)"),
        ("student:\n  space:\n    depth: {min: 0, max: 2}\n", "student.space.depth.min: Input should be greater"),
        ("student:\n  space:\n    heads: []\n", "student.space.heads: List should have at least 1 item"),
        ("student:\n  space:\n    head_dim: [16, -8]\n", "student.space.head_dim: every choice must be a positive"),
        ("kd:\n  alpha: 1.5\n", "kd.alpha must lie in [0, 1]"),
        ("kd:\n  temperature: {start: 4, end: 0}\n", "kd.temperature must be positive"),
        (
            "kd:\n  intermediate: {layer_map: [2, 4]}\n",
            "kd.intermediate.layer_map lists 2 layers, so student.space.depth must be fixed at 2 (it is 1..4)",
        ),
        (
            "kd:\n  intermediate: {teachers: [bert]}\n",
            "kd.intermediate.teachers names unknown teacher(s) ['bert']; teachers are ['minilm', 'gpt2']",
        ),
        ("kd:\n  space: {alpha: [0.5, 2]}\n", "kd.space.alpha choices must lie in [0, 1]"),
        ("data:\n  metric: bleu\n", "data.metric: Input should be 'accuracy', 'f1' or 'mcc'"),
        ("data:\n  source: files\n", "data.train_file and data.validation_file are required"),
        ("teachers: []\n", "teachers: List should have at least 1 item"),
        ("kd:\n  combiner: weighted\n", "kd.teacher_weights is required when kd.combiner is 'weighted'"),
        ("kd:\n  combiner: weighted\n  teacher_weights: [1]\n", "kd.teacher_weights has 1 weights for 2 teachers"),
        ("kd:\n  teacher_weights: [1, -1]\n", "kd.teacher_weights must be non-negative"),
        ("- a\n- b\n", "must be a mapping of sections"),
        ("search: [\n", "is not valid YAML"),
    ],
)
def test_bad_config_is_one_clear_line_with_exit_code_2(tmp_path, yaml_text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml_text)
    with pytest.raises(ConfigError, match=None) as err:
        load_config(path)
    assert message in str(err.value)
    proc = subprocess.run(
        [sys.executable, "-m", "kdnas.cli", "search", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kdnas: error: ") and message in lines[0]


def test_bad_override_and_missing_file():
    with pytest.raises(ConfigError, match="not of the form section.key=value"):
        load_config(None, ["search.n_trials"])
    with pytest.raises(ConfigError, match="cannot read config /nonexistent.yaml"):
        load_config("/nonexistent.yaml")
