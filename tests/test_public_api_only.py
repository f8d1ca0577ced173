"""src/ reaches Optuna and Ray (and every other library) through their public API only.

Two simple rules:

- no attribute access ``x._name`` (one leading underscore, not a dunder) anywhere under ``src/kdnas`` unless ``x`` is
  ``self`` or ``cls`` (an object's own state). kdnas's own modules and objects follow it too, so a private attribute
  of an Optuna or Ray object cannot hide behind a kdnas name. The few exceptions are listed in :data:`ALLOWED` with
  why; none is an Optuna or Ray object;
- a kdnas class deriving from an Optuna or Ray class uses no ``self._name`` that one of those classes uses or
  defines (its private state or methods, reached through ``self``).
"""

from __future__ import annotations

import ast
import importlib
import inspect
import textwrap
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "kdnas"

ALLOWED: dict[tuple[str, str], str] = {
    # (file relative to src/kdnas, attribute): why
    (
        "distill/intermediate.py",
        "_attn_implementation",
    ): "transformers' PretrainedConfig has no public setter for the attention implementation of a config built "
    "in code; neither Optuna nor Ray",
    (
        "latency/serving.py",
        "_attn_implementation",
    ): "the attention implementation to put back after an ONNX export (eager attention is what ORT fuses); "
    "transformers has no public getter",
}


def private_accesses(source: str) -> list[tuple[int, str]]:
    """(line, ``owner._name`` text) of every private attribute access whose owner is not ``self``/``cls``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Attribute):
            continue
        name = node.attr
        if not name.startswith("_") or (name.startswith("__") and name.endswith("__")):
            continue
        if isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"):
            continue
        found.append((node.lineno, f"{ast.unparse(node.value)}.{name}"))
    return found


def violations(root: Path = SRC) -> list[str]:
    problems = []
    for path in sorted(root.rglob("*.py")):
        relative = path.relative_to(root).as_posix()
        for line, access in private_accesses(path.read_text()):
            if (relative, access.rsplit(".", 1)[1]) not in ALLOWED:
                problems.append(f"src/kdnas/{relative}:{line}: {access}")
    return problems


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _own_private_names(tree: ast.AST) -> set[str]:
    """The ``self._name``/``cls._name`` attributes used in ``tree``."""
    return {
        node.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and _private(node.attr)
        and isinstance(node.value, ast.Name)
        and node.value.id in ("self", "cls")
    }


def _foreign_private_names(cls: type) -> dict[str, str]:
    """Private name → the Optuna or Ray class in ``cls``'s MRO that uses or defines it."""
    names: dict[str, str] = {}
    for base in cls.__mro__[1:]:
        if base.__module__.split(".")[0] not in ("optuna", "ray"):
            continue
        found = {name for name in vars(base) if _private(name)}
        try:
            found |= _own_private_names(ast.parse(textwrap.dedent(inspect.getsource(base))))
        except (OSError, TypeError):
            pass
        for name in found:
            names.setdefault(name, f"{base.__module__}.{base.__qualname__}")
    return names


def inherited_private_uses(root: Path = SRC) -> list[str]:
    problems = []
    for path in sorted(root.rglob("*.py")):
        tree = ast.parse(path.read_text())
        classes = [node for node in tree.body if isinstance(node, ast.ClassDef) and node.bases]
        if not classes:
            continue
        relative = path.relative_to(root)
        module = importlib.import_module(".".join(("kdnas", *relative.with_suffix("").parts)).removesuffix(".__init__"))
        for node in classes:
            foreign = _foreign_private_names(getattr(module, node.name))
            for name in sorted(_own_private_names(node) & foreign.keys()):
                problems.append(f"src/kdnas/{relative.as_posix()}: {node.name} uses self.{name} of {foreign[name]}")
    return problems


def test_src_touches_no_private_attribute_of_another_object():
    problems = violations()
    assert not problems, "private attributes reached from outside their object:\n" + "\n".join(problems)


def test_src_classes_use_no_private_state_of_their_optuna_or_ray_bases():
    problems = inherited_private_uses()
    assert not problems, "private state of an Optuna or Ray base class used:\n" + "\n".join(problems)


def test_the_rule_catches_what_it_should_and_spares_what_it_should():
    source = (
        "study._storage.create_new_trial(study._study_id)\n"
        "trial._trial_id\n"
        "super()._metric\n"
        "self._ot_trials\n"
        "cls._registry\n"
        "type(x).__name__\n"
    )
    assert sorted(access for _, access in private_accesses(source)) == [
        "study._storage",
        "study._study_id",
        "super()._metric",
        "trial._trial_id",
    ]


def test_the_allowlist_names_only_accesses_that_exist():
    for (relative, name), _why in ALLOWED.items():
        accesses = private_accesses((SRC / relative).read_text())
        assert any(access.endswith("." + name) for _, access in accesses), f"stale allowlist entry {relative}:{name}"


def test_the_code_before_the_public_api_bridge_breaks_the_rules():
    before = "ot_trial = self._ot_trials[trial_id]\nstudy._thread_local.cached_all_trials = None\n"
    assert [access for _, access in private_accesses(before)] == ["study._thread_local"]
    searcher = type("Searcher", (), {"__module__": "ray.tune.search", "_ot_trials": {}, "metric": None})
    helper = type("Helper", (), {"_cache": None})  # not Optuna's or Ray's: its private names are kdnas's own
    assert _foreign_private_names(type("OldKDNASSearch", (helper, searcher), {})) == {
        "_ot_trials": "ray.tune.search.Searcher"
    }
