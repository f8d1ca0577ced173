"""Reading a study is light: the commands that only read one never import torch, Ray or transformers.

And readers and writers agree on what a trial records: every Tune result key and trial/study attr name is spelled
once, in ``kdnas.study.records`` (which readers import, light as it is); no other module of src/kdnas spells one
as a string.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import textwrap
from pathlib import Path

from conftest import save_tiny_student

HEAVY = ("torch", "ray", "transformers", "datasets")

READERS = textwrap.dedent("""
    import json, sys
    from pathlib import Path

    import optuna
    from optuna.distributions import IntDistribution
    from optuna.trial import create_trial

    root = Path(sys.argv[1])
    storage = f"sqlite:///{root / 'study.db'}"
    study = optuna.create_study(storage=storage, study_name="s", directions=["maximize", "minimize"])
    study.set_metric_names(["accuracy", "latency_ms"])
    student = root / "student"
    assert (student / "model.safetensors").is_file()  # a real student, saved by the test (torch stays out)
    for number, (accuracy, latency) in enumerate([(0.8, 1.0), (0.9, 2.0), (0.7, 3.0)]):
        study.add_trial(create_trial(
            values=[accuracy, latency], params={"num_layers": number + 1},
            distributions={"num_layers": IntDistribution(1, 4)},
            user_attrs={"arch_summary": f"L{number + 1}-H64", "params": 1000 * (number + 1),
                        "student_path": str(student), "kd": {}, "init": {}}))

    import kdnas

    api = [kdnas.load_config, kdnas.load_study, kdnas.pareto_front, kdnas.knee_point, kdnas.best_under_budget,
           kdnas.write_report, kdnas.export_trial]  # the public API's readers
    from kdnas.cli import main
    from kdnas.readers import launcher  # noqa: F401  (kdnas dashboard's module; serving would block)

    flags = ["--storage", storage, "--study-name", "s", "--output-dir", str(root / "out")]
    codes = [main([command, *flags, *extra]) for command, extra in (
        ("studies", []), ("trials", []), ("report", []), ("export", ["--knee", "--out", str(root / "export")]))]
    print(json.dumps({"codes": codes, "heavy": [m for m in HEAVY if m in sys.modules]}))
""")


def test_report_export_trials_studies_and_the_dashboard_read_a_study_without_the_training_stack(tmp_path):
    save_tiny_student(tmp_path / "student")
    done = subprocess.run(
        [sys.executable, "-c", f"HEAVY = {HEAVY!r}\n{READERS}", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    outcome = json.loads(done.stdout.strip().splitlines()[-1])
    assert outcome == {"codes": [0, 0, 0, 0], "heavy": []}
    assert (tmp_path / "out" / "report" / "report.html").is_file()
    assert json.loads((tmp_path / "export" / "kdnas_trial.json").read_text())["trial"] in (0, 1)  # the front


# --- every record name is study/records.py's ---------------------------------------------------------------------

SRC = Path(__file__).resolve().parents[1] / "src" / "kdnas"

RECEIVERS = {"user_attrs", "system_attrs", "attrs", "result", "constraints"}
"""What holds record names as keys: a trial's or study's attrs (``t.user_attrs``, ``attrs``, ``record["user_attrs"]``),
a Tune result, a trial's constraints."""

ATTR_CALLS = {"set_user_attr", "set_system_attr", "record_once"}
"""Calls that record attrs: the literal (or dict of literals) they are given names attrs."""


def record_names() -> dict[str, str]:
    """Each Tune result key and trial/study attr name ``kdnas.study.records`` defines → the constant that holds it."""
    import kdnas.study.records as records

    names: dict[str, str] = {}
    for constant, value in vars(records).items():
        if constant.endswith(("_KEY", "_ATTR", "_CONSTRAINT")) and isinstance(value, str):
            names.setdefault(value, constant)  # "teachers": TEACHERS_ATTR and STUDY_TEACHERS_ATTR
    return names


def _holds_records(node: ast.expr) -> bool:
    """Whether ``node`` is one of :data:`RECEIVERS`: by its last name (``x.user_attrs``, ``attrs``, ``r["attrs"]``)."""
    if isinstance(node, ast.Name):
        return node.id in RECEIVERS
    if isinstance(node, ast.Attribute):
        return node.attr in RECEIVERS
    return isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant) and node.slice.value in RECEIVERS


def _attr_keys(tree: ast.AST) -> set[int]:
    """The ids of the nodes used as a record key: ``R[k]``, ``R.get(k)``, ``k in R``, ``set_user_attr(k, …)``, and
    the keys of a dict given as ``user_attrs=``/``attrs=``/…, to an attr call or assigned to such a name."""
    keys: list[ast.AST | None] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Subscript) and _holds_records(node.value):
            keys.append(node.slice)
        elif isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            keys += [
                operands[i]
                for i, op in enumerate(node.ops)
                if isinstance(op, (ast.In, ast.NotIn)) and _holds_records(operands[i + 1])
            ]
        elif isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
            if name in ("get", "pop", "setdefault") and isinstance(func, ast.Attribute) and _holds_records(func.value):
                keys += node.args[:1]
            if name in ATTR_CALLS:
                keys += node.args[:1]
                keys += [key for arg in node.args if isinstance(arg, ast.Dict) for key in arg.keys]
            keys += [
                key
                for kw in node.keywords
                if kw.arg in RECEIVERS and isinstance(kw.value, ast.Dict)
                for key in kw.value.keys
            ]
        elif isinstance(node, (ast.Assign, ast.AnnAssign)) and isinstance(node.value, ast.Dict):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(_holds_records(target) for target in targets):
                keys += node.value.keys
    return {id(key) for key in keys if key is not None}


def keyed_record_literals(source: str, names: dict[str, str]) -> list[tuple[int, str]]:
    """(line, literal) of every string literal in ``source`` that equals a record name and is used as a record key.

    Literals that merely share a spelling (a teacher's record, a training state, a config section, a table column)
    are not record keys and are left alone."""
    tree = ast.parse(source)
    keys = _attr_keys(tree)
    return sorted(
        (node.lineno, node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in names and id(node) in keys
    )


def test_src_spells_no_result_key_or_attr_name_outside_records():
    names = record_names()
    problems = [
        f"src/kdnas/{path.relative_to(SRC).as_posix()}:{line}: {value!r} is records.{names[value]}"
        for path in sorted(SRC.rglob("*.py"))
        if path != SRC / "study" / "records.py"  # where the names are defined
        for line, value in keyed_record_literals(path.read_text(), names)
    ]
    assert not problems, "record names spelled as literals (use kdnas.study.records' constant):\n" + "\n".join(problems)


def test_the_record_names_are_the_results_and_attrs_records_defines():
    names = record_names()
    assert {"latency_ms", "epoch", "kdnas_attrs", "arch_summary", "student_path", "params", "duplicate_of"} <= set(
        names
    )
    assert {"kdnas:driver", "kdnas:heartbeat", "fingerprint", "task", "config", "teachers"} <= set(names)
    assert "median_ms" not in names and "config.json" not in names  # a latency field, a student file: not names


def test_the_record_check_catches_literal_attr_names_and_spares_other_namespaces():
    source = textwrap.dedent("""
        def reader(t, study, record, result, attrs, lat, ref):
            t.user_attrs.get("arch_summary", "?")
            t.user_attrs["student_path"]
            "duplicate_of" in t.user_attrs
            t.system_attrs.get("kdnas:driver")
            study.set_user_attr("fingerprint", {})
            record_once(study, {"task": {}})
            result.get("latency_ms")
            record["user_attrs"].get("params", 0)
            study.enqueue_trial({}, user_attrs={"retry_of": 1})
            attrs = {"epochs_trained": 0}
            ref["latency_ms"]
            lat.get("median_ms")
            state = {"epoch": 1}
            rows = {"arch": t.user_attrs.get(ARCH_SUMMARY_ATTR)}
    """)
    assert keyed_record_literals(source, record_names()) == [
        (3, "arch_summary"),
        (4, "student_path"),
        (5, "duplicate_of"),
        (6, "kdnas:driver"),
        (7, "fingerprint"),
        (8, "task"),
        (9, "latency_ms"),
        (10, "params"),
        (11, "retry_of"),
        (12, "epochs_trained"),
    ]  # not: a teacher's record (13), a latency field (14), a training state (15), a table column (16)


def test_a_learning_curve_reads_as_typed_points_whatever_its_points_hold():
    from kdnas.study.records import LEARNING_CURVE_ATTR, CurvePoint
    from kdnas.study.student_record import StudentRecord

    full = CurvePoint(0.5, 0.81, 12.5, 0.74, 0.01)
    attrs = {LEARNING_CURVE_ATTR: [[0.25, 0.6, 3.0], full.to_attr()]}  # a point of three, then one of five
    first, second = StudentRecord.from_attrs(attrs).learning_curve or []
    assert (first.epochs, first.metric, first.seconds, first.label_probability) == (0.25, 0.6, 3.0, None)
    assert second == full and second.to_attr() == [0.5, 0.81, 12.5, 0.74, 0.01]
    assert StudentRecord.from_attrs({}).learning_curve is None  # a trial that recorded none


# --- no record is read by key outside the typed records -------------------------------------------------------------

BENCHMARKS = SRC.parents[1] / "benchmarks"

RECORD_MODULES = {"study/records.py", "study/student_record.py", "study/study_record.py"}
"""The typed records: the only modules of src/kdnas that read a record by key."""


KEYED = {"user_attrs", "system_attrs", "attrs"}
"""What holds a record: a trial's or study's attrs (``t.user_attrs``, ``t.system_attrs``), a report's (``r.attrs``)."""


def record_constants() -> set[str]:
    """The names of the keys ``kdnas.study.records`` defines (``ARCH_ATTR``, ``LATENCY_KEY``, ``PARAMS_CONSTRAINT``)."""
    import kdnas.study.records as records

    suffixes = ("_ATTR", "_KEY", "_CONSTRAINT")
    return {name for name, value in vars(records).items() if name.endswith(suffixes) and isinstance(value, str)}


def _is_constant(node: ast.expr, constants: set[str]) -> bool:
    """Whether ``node`` names a record key's constant (``ARCH_ATTR``, ``records.ARCH_ATTR``)."""
    return (isinstance(node, ast.Name) and node.id in constants) or (
        isinstance(node, ast.Attribute) and node.attr in constants
    )


def _is_keyed(node: ast.expr) -> bool:
    """Whether ``node`` is a record held as a dict (``t.user_attrs``, ``report.attrs``, ``attrs``)."""
    return (isinstance(node, ast.Name) and node.id in KEYED) or (isinstance(node, ast.Attribute) and node.attr in KEYED)


def keyed_record_reads(source: str, constants: set[str]) -> list[tuple[int, str]]:
    """(line, code) of each read of a record by key in ``source``: ``R[k]``, ``R.get(k)`` (``pop``, ``setdefault``) or
    ``k in R`` where ``k`` is a record key's constant or ``R`` a record held as a dict (:data:`KEYED`)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Subscript):
            hit = _is_keyed(node.value) or _is_constant(node.slice, constants)
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            by_key = node.func.attr in ("get", "pop", "setdefault")
            hit = by_key and (_is_keyed(node.func.value) or any(_is_constant(a, constants) for a in node.args[:1]))
        elif isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            hit = any(
                isinstance(op, (ast.In, ast.NotIn)) and (_is_constant(key, constants) or _is_keyed(held))
                for op, key, held in zip(node.ops, operands, operands[1:])
            )
        else:
            continue
        if hit:
            found.append((node.lineno, ast.unparse(node)))
    return sorted(found)


def test_no_record_is_read_by_key_outside_the_typed_records():
    constants = record_constants()
    sources = {f"src/kdnas/{p.relative_to(SRC).as_posix()}": p for p in sorted(SRC.rglob("*.py"))}
    sources.update({f"benchmarks/{p.name}": p for p in sorted(BENCHMARKS.glob("*.py"))})
    skipped = {f"src/kdnas/{name}" for name in RECORD_MODULES}
    problems = [
        f"{name}:{line}: {code}"
        for name, path in sources.items()
        if name not in skipped
        for line, code in keyed_record_reads(path.read_text(), constants)
    ]
    assert not problems, "records read by key (read them through kdnas.study's typed records):\n" + "\n".join(problems)


def test_the_typed_record_check_catches_reads_by_key_and_spares_writes_and_other_dicts():
    source = textwrap.dedent("""
        def reader(t, study, report, config, result, row, attrs):
            t.user_attrs["arch_summary"]
            t.user_attrs.get(key)
            study.user_attrs.get(RETIMED_ATTR) or {}
            "duplicate_of" in t.user_attrs
            t.system_attrs.get("kdnas:driver")
            report.attrs[COLLAPSED_ATTR]
            config[TRIAL_NUMBER_KEY]
            result.get(records.LATENCY_KEY)
            COLLAPSED_ATTR not in row
            attrs.pop(STUDENT_PATH_ATTR)
            study.set_user_attr(RETIMED_ATTR, {})
            attrs = {ARCH_ATTR: {}, LATENCY_KEY: 1.0}
            StudentRecord.of(t).arch_summary
            row["state"], result.get("time_total_s"), "x" in row
    """)
    assert [line for line, _ in keyed_record_reads(source, record_constants())] == list(range(3, 13))
