"""The configuration documents itself: every setting has a description in the model, and the README's reference and
``examples/demo.yaml`` are what ``scripts/config_reference.py`` generates from it."""

import sys
from pathlib import Path

import yaml

from kdnas.config import KDNASConfig, TeacherConfig, build_config

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import config_reference


def test_every_setting_has_a_description():
    missing = [key for key, _, text in config_reference.leaves(KDNASConfig, KDNASConfig()) if not text]
    assert missing == []


def test_the_reference_lists_every_setting_once_with_its_default():
    rows = [line for line in config_reference.reference_table().splitlines()[2:]]
    keys = [row.split("`")[1] for row in rows]
    assert len(keys) == len(set(keys)) and {"output_dir", "teachers[].fit.epochs", "search.early_stopping.mode"} <= set(
        keys
    )
    assert "| `training.epochs` | `2` |" in config_reference.reference_table()
    assert all(key.split(".")[-1] in TeacherConfig.model_fields for key in keys if key.count(".") == 1 and "[]" in key)


def test_the_readme_reference_is_generated_from_the_config():
    readme = config_reference.README.read_text()
    assert config_reference.readme_with_reference(readme) == readme, "run python scripts/config_reference.py"


def test_demo_yaml_is_generated_from_the_config_and_is_the_default():
    text = config_reference.DEMO_YAML.read_text()
    assert text == config_reference.demo_yaml(), "run python scripts/config_reference.py"
    assert build_config(yaml.safe_load(text)) == KDNASConfig()
