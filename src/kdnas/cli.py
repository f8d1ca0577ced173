"""The ``kdnas`` command line: search, teachers, report, export, studies, trials, dashboard, latency."""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from kdnas.config import ConfigError, KDNASConfig, load_config
from kdnas.errors import first_line
from kdnas.outputs import writable_dir

logger = logging.getLogger("kdnas")


def _config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", "-c", help="YAML config (default: the built-in demo)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set search.n_trials=20 (repeatable)",
    )
    parser.add_argument("--storage", help="Optuna storage URL (default: SQLite file in the output dir)")
    parser.add_argument("--study-name", help="study name")
    parser.add_argument("--output-dir", help="output directory")


def _load(args: argparse.Namespace) -> KDNASConfig:
    overrides = list(args.overrides)
    for flag, key in (
        ("storage", "search.storage"),
        ("study_name", "search.study_name"),
        ("output_dir", "output_dir"),
        ("n_trials", "search.n_trials"),
        ("time_budget_s", "search.time_budget_s"),
        ("ray_address", "search.ray_address"),
    ):
        value = getattr(args, flag, None)
        if value is not None:
            overrides.append(f"{key}={json.dumps(value)}")
    config = load_config(args.config, overrides)
    _quiet_libraries()
    return config


def _study(config: KDNASConfig, *, read_only: bool = True):
    """The config's study; a SQLite file opened read-only unless the command writes to it (``read_only=False``)."""
    from kdnas.study.storage import load_study

    return load_study(config.storage_url, config.search.study_name, read_only=read_only)


def _print_table(rows: list[dict]) -> None:
    """Print rows as a left-aligned plain-text table."""
    if not rows:
        print("(none)")
        return
    cells = [[str(k) for k in rows[0]]] + [
        ["" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v) for v in row.values()] for row in rows
    ]
    widths = [max(len(r[i]) for r in cells) for i in range(len(cells[0]))]
    for row in cells:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())


class Interrupted(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C (SIGINT): the search stops and says how to resume."""

    signum = signal.SIGTERM


_terminated: list[int] = []
"""SIGTERM received by this process (Ray Tune may re-raise the interrupt as a plain KeyboardInterrupt)."""


def _raise_interrupted(signum: int, frame: object) -> None:
    _terminated.append(signum)
    raise Interrupted()


def _release_trials(config: KDNASConfig) -> None:
    """Fail (and re-enqueue) the trials this driver leaves RUNNING, so a stopped search leaves none behind."""
    from kdnas.study.orphans import reconcile_orphans
    from kdnas.study.storage import find_study, open_existing_storage

    try:
        storage = open_existing_storage(config.storage_url)
        study = find_study(storage, config.search.study_name)
        released = reconcile_orphans(study, storage) if study is not None else 0
    except Exception:  # e.g. the storage is what failed; the next run reconciles them instead
        logger.debug("could not release this driver's trials", exc_info=True)
        return
    if released:
        logger.info("%d running trial(s) were failed and will be retried by the next run", released)


def _search_problem(study) -> str | None:
    """Why the search produced no usable student (None when this run, or the study, holds a COMPLETE one)."""
    from kdnas.study.storage import outcome_problem
    from kdnas.study.student_record import DriverId, TrialClaim

    driver = DriverId.current()
    mine = [t for t in study.trials if TrialClaim.of(t).driver == driver]
    problem = outcome_problem(mine or study.trials)
    return f"{problem}; see: kdnas trials --state fail" if problem else None


def _cmd_search(args: argparse.Namespace) -> int:
    config = _load(args)
    from kdnas.readers.report import write_report
    from kdnas.resources import ResourcesUnavailable
    from kdnas.study.front import front_rows
    from kdnas.study.storage import mask_url
    from kdnas.tune.driver import run_search

    os.environ.setdefault("TUNE_DISABLE_SIGINT_HANDLER", "1")  # Ctrl-C stops the search here, not in Tune
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _raise_interrupted) if in_main_thread else None
    try:
        study = run_search(config)
    except BaseException as err:
        if isinstance(err, ResourcesUnavailable) or not isinstance(err, ConfigError):
            _release_trials(config)
        raise
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)
    problem = _search_problem(study)
    if problem:
        print(f"kdnas: error: {problem}", file=sys.stderr)
        return 1
    print(f"\nPareto front ({config.data.metric} vs latency):")
    _print_table(front_rows(study, config.data.metric))
    paths = write_report(
        study, Path(config.output_dir) / "report", config.data.metric, latency_budget_ms=config.latency.budget_ms
    )
    print(f"\nstudy:  {config.search.study_name} in {mask_url(config.storage_url)}")
    print(f"report: {paths['html']}")
    return 0


def _cmd_teachers_fit(args: argparse.Namespace) -> int:
    config = _load(args)
    from kdnas.data import load_task
    from kdnas.teachers.fitting import fit_teachers

    writable_dir(Path(config.output_dir), "output_dir")
    task = load_task(config.data)
    records = fit_teachers(config, task, force=args.force)
    if not records:
        print("every teacher is already fitted for this task (use --force to refit)")
    for record in records:
        print(f"{record.name}: {record.metric} = {record.value:.4f}")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    config = _load(args)
    from kdnas.readers.report import write_report
    from kdnas.study.front import front_rows

    study = _study(config)
    metric = (study.metric_names or [config.data.metric])[0]
    print(f"Pareto front ({metric} vs latency):")
    _print_table(front_rows(study, metric))
    out = writable_dir(
        Path(args.out) if args.out else Path(config.output_dir) / "report", "--out" if args.out else "output_dir"
    )
    paths = write_report(study, out, metric, latency_budget_ms=args.latency_budget_ms)
    for kind, path in paths.items():
        print(f"{kind}: {path}")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    config = _load(args)
    from optuna.trial import TrialState

    from kdnas.readers.export import check_export_target, export_trial, saved_student
    from kdnas.study.front import best_under_budget, knee_point, pareto_front
    from kdnas.study.student_record import StudentRecord

    study = _study(config)
    try:
        if args.trial is not None:
            trial = study.trials[args.trial] if 0 <= args.trial < len(study.trials) else None
            if trial is None:
                raise ConfigError(f"--trial {args.trial}: the study has trials 0..{len(study.trials) - 1}")
        elif args.knee:
            trial = knee_point(pareto_front(study))
        else:
            trial = best_under_budget(study, latency_ms=args.latency_budget_ms, params=args.param_budget)
    except (LookupError, ValueError) as err:
        trials = study.get_trials(deepcopy=False)
        collapsed = [t.number for t in trials if StudentRecord.of(t).collapsed is not None]
        kept_off = f" (trials {', '.join(map(str, collapsed))} collapsed: name one with --trial)" if collapsed else ""
        raise ConfigError(f"{err}{kept_off}") from None
    record = StudentRecord.of(trial)
    if record.collapsed is not None:  # only --trial reaches one: the front and budgets leave them out
        print(f"warning: trial {trial.number} collapsed ({record.collapsed})", file=sys.stderr)
    out = Path(args.out) if args.out else Path(config.output_dir) / "export" / f"trial-{trial.number:04d}"
    writable_dir(out, "--out" if args.out else "output_dir")
    check_export_target(study, trial, out, args.overwrite)  # before any retraining
    retrained = None
    if args.retrain and trial.state == TrialState.COMPLETE and saved_student(trial) is None:
        from kdnas.tune.retrain import retrain_student

        retrained = retrain_student(study, trial, epochs=args.epochs)
    export_trial(study, trial, out, retrained=retrained, overwrite=args.overwrite)
    value, latency_ms = (retrained.value, retrained.latency_ms) if retrained else trial.values
    print(
        f"exported trial {trial.number} ({record.label})"
        f"{', retrained' if retrained else ''}: {study.metric_names[0]}={value:.4f}, latency={latency_ms:.3f} ms"
        f" -> {out}"
    )
    return 0


def _cmd_studies(args: argparse.Namespace) -> int:
    config = _load(args)
    from kdnas.study.storage import study_summaries

    _print_table(study_summaries(config.storage_url))
    return 0


def _cmd_trials(args: argparse.Namespace) -> int:
    config = _load(args)
    from optuna.trial import TrialState

    from kdnas.readers.report import trial_rows
    from kdnas.study.student_record import StudentRecord

    study = _study(config)
    rows = trial_rows(study, (study.metric_names or [config.data.metric])[0])
    if args.state:
        rows = [r for r in rows if r["state"] == args.state.upper()]
    hidden = {"kd", "num_layers", "num_heads", "head_dim", "ffn_ratio"}
    _print_table([{k: v for k, v in r.items() if k not in hidden} for r in rows])
    if args.state and args.state.upper() == "FAIL":  # where each failed: the worker's log stays on its node
        for trial in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)):
            traceback = StudentRecord.of(trial).failure_traceback
            if traceback is not None:
                print(f"\ntrial {trial.number}: {traceback.rstrip()}")
    return 0


def _cmd_dashboard(args: argparse.Namespace) -> int:
    config = _load(args)
    from kdnas.readers.launcher import check_can_listen, serve_dashboard
    from kdnas.study.storage import mask_url

    _study(config, read_only=False)  # a clear error when the study does not exist; the dashboard writes notes
    check_can_listen(args.host, args.port)
    print(f"optuna-dashboard on http://{args.host}:{args.port} for {mask_url(config.storage_url)}", flush=True)
    try:
        serve_dashboard(config.storage_url, config.search.study_name, host=args.host, port=args.port)
    except KeyboardInterrupt:  # the way to stop a dashboard
        pass
    return 0


def _cmd_latency(args: argparse.Namespace) -> int:
    config = _load(args)
    from kdnas.latency.timing import cpu_flags, device_name, resolve_device
    from kdnas.tune.retime import measure_architecture
    from kdnas.tune.runtimes import SERVING_FORMS, latency_table

    archs = _architectures(args)
    if len(archs) == 1 and not args.compare and not config.latency.searches_precision:
        result = measure_architecture(config, archs[0])
        print(json.dumps({"arch": archs[0].summary, **result.to_dict()}, indent=2))
        return 0
    settings = config.latency
    forms = SERVING_FORMS if args.compare else [(settings.runtime, precision) for precision in settings.precisions]
    device = resolve_device(settings.device)
    print(
        f"median latency on {device_name(device)} ({cpu_flags() or 'no AVX2'}), batch {settings.batch_size}, "
        f"sequence {config.latency_seq_len}, {settings.threads} thread(s):"
    )
    _print_table(latency_table(config, archs, forms))
    return 0


def _architectures(args: argparse.Namespace) -> list[Any]:
    """The architectures ``kdnas latency`` times: each ``--arch`` summary, or the one ``--layers``/``--heads``/
    ``--head-dim``/``--ffn-ratio`` describe."""
    from kdnas.student import StudentArch

    try:
        if args.arch:
            return [StudentArch.from_summary(summary) for summary in args.arch]
        if args.layers is None or args.heads is None or args.head_dim is None:
            raise ValueError(
                "name the architecture: --arch L2-H128-A4-F512 (repeatable), or --layers, --heads and --head-dim"
            )
        return [StudentArch(args.layers, args.heads, args.head_dim, args.ffn_ratio)]
    except ValueError as err:
        raise ConfigError(str(err)) from None


def _cmd_retime(args: argparse.Namespace) -> int:
    config = _load(args)
    from kdnas.study.front import front_rows
    from kdnas.tune.retime import retime_study

    study = _study(config, read_only=False)
    record = retime_study(study, config, rounds=args.rounds)
    metric = (study.metric_names or [config.data.metric])[0]
    teachers = record.teachers or {}
    print(
        f"re-timed {len(record.students or {})} students and {len(teachers)} teachers on {record.host} "
        f"({record.device_name}) in {record.seconds:g} s"
    )
    for name, latency_ms in teachers.items():
        print(f"teacher {name}: {latency_ms:.3f} ms")
    print(f"\nPareto front ({metric} vs re-timed latency):")
    _print_table(front_rows(study, metric))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kdnas",
        description="Search small student transformers and teach each one with several teachers at once.",
    )
    parser.add_argument("--verbose", "-v", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True)
    _search_commands(commands)
    _reader_commands(commands)
    _latency_commands(commands)
    return parser


def _search_commands(commands: Any) -> None:  # argparse names the type of add_subparsers() privately
    """``search`` and ``teachers fit``: the commands that train."""
    search = commands.add_parser("search", help="run (or resume) a student search")
    _config_arguments(search)
    search.add_argument("--n-trials", type=int, help="total number of trials in the study")
    search.add_argument(
        "--time-budget-s",
        type=float,
        help="stop this run's search after this many seconds (unfinished students are PRUNED)",
    )
    search.add_argument("--ray-address", help="Ray cluster address (default: RAY_ADDRESS, else local Ray)")
    search.set_defaults(func=_cmd_search)

    teachers = commands.add_parser("teachers", help="teacher commands")
    teacher_commands = teachers.add_subparsers(dest="teachers_command", required=True)
    fit = teacher_commands.add_parser("fit", help="fine-tune (or train) the configured teachers on the task")
    _config_arguments(fit)
    fit.add_argument("--force", action="store_true", help="refit teachers that are already fitted")
    fit.set_defaults(func=_cmd_teachers_fit)


def _reader_commands(commands: Any) -> None:  # argparse names the type of add_subparsers() privately
    """The commands that read a study: ``report``, ``export``, ``studies``, ``trials``, ``dashboard``."""
    report = commands.add_parser("report", help="print the Pareto front; write HTML report, CSV and JSON")
    _config_arguments(report)
    report.add_argument("--out", help="report directory (default: <output_dir>/report)")
    report.add_argument("--latency-budget-ms", type=float, help="draw this latency budget on the plot")
    report.set_defaults(func=_cmd_report)

    export = commands.add_parser("export", help="export a student as a Hugging Face model directory")
    _config_arguments(export)
    chooser = export.add_mutually_exclusive_group()
    chooser.add_argument("--trial", type=int, help="export this trial number")
    chooser.add_argument("--knee", action="store_true", help="export the knee of the Pareto front")
    export.add_argument("--latency-budget-ms", type=float, help="best student within this latency")
    export.add_argument("--param-budget", type=int, help="best student within this many parameters")
    export.add_argument("--out", help="output directory (default: <output_dir>/export/trial-N)")
    export.add_argument(
        "--retrain",
        action="store_true",
        help="if the trial's saved weights are missing, train its architecture again with its recipe",
    )
    export.add_argument("--epochs", type=int, help="with --retrain: train this many epochs (default: the study's)")
    export.add_argument(
        "--overwrite", action="store_true", help="replace the files of a non-empty --out (refused without it)"
    )
    export.set_defaults(func=_cmd_export)

    studies = commands.add_parser("studies", help="list the studies in the storage with their trial counts")
    _config_arguments(studies)
    studies.set_defaults(func=_cmd_studies)

    trials = commands.add_parser("trials", help="list a study's trials: state, values, arch, failure reason")
    _config_arguments(trials)
    trials.add_argument(
        "--state", choices=["complete", "pruned", "fail", "running", "waiting"], help="only trials in this state"
    )
    trials.set_defaults(func=_cmd_trials)

    dashboard = commands.add_parser("dashboard", help="serve the study with optuna-dashboard")
    _config_arguments(dashboard)
    dashboard.add_argument("--host", default="127.0.0.1", help="bind address (default: 127.0.0.1)")
    dashboard.add_argument("--port", type=int, default=8080, help="port (default: 8080)")
    dashboard.set_defaults(func=_cmd_dashboard)


def _latency_commands(commands: Any) -> None:  # argparse names the type of add_subparsers() privately
    """``latency`` (one architecture) and ``retime`` (a study's students and teachers)."""
    latency = commands.add_parser(
        "latency", help="measure student architectures' latency, or compare runtimes and precisions (--compare)"
    )
    _config_arguments(latency)
    latency.add_argument("--arch", action="append", help="an architecture such as L2-H128-A4-F512 (repeatable)")
    latency.add_argument("--layers", type=int)
    latency.add_argument("--heads", type=int)
    latency.add_argument("--head-dim", type=int)
    latency.add_argument("--ffn-ratio", type=int, default=4)
    latency.add_argument(
        "--compare",
        action="store_true",
        help="a table of each architecture in PyTorch fp32, ONNX Runtime fp32 and ONNX Runtime int8",
    )
    latency.set_defaults(func=_cmd_latency)

    retime = commands.add_parser(
        "retime", help="measure the study's students and teachers again on this node; the front then uses these"
    )
    _config_arguments(retime)
    retime.add_argument(
        "--rounds", type=int, default=3, help="interleaved measurements of each model; the fastest is kept (default: 3)"
    )
    retime.set_defaults(func=_cmd_retime)


def _quiet_libraries() -> None:
    """Quiet the libraries' own logs and progress bars (kdnas shows its own) through the environment, so commands
    that only read a study never import transformers or datasets; Ray workers inherit it."""
    for name, value in (
        ("TOKENIZERS_PARALLELISM", "false"),
        ("RAY_AIR_NEW_OUTPUT", "0"),
        ("TRANSFORMERS_VERBOSITY", "error"),
        ("HF_HUB_DISABLE_PROGRESS_BARS", "1"),
        ("HF_DATASETS_DISABLE_PROGRESS_BARS", "1"),
    ):
        os.environ.setdefault(name, value)
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``kdnas`` console script."""
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    logging.basicConfig(format="[kdnas] %(message)s", level=logging.WARNING)
    logger.setLevel(logging.DEBUG if args.verbose else logging.INFO)
    try:
        return args.func(args)
    except ConfigError as err:
        print(f"kdnas: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:
        again = f"; to resume, run the same command again: kdnas {shlex.join(argv)}" if args.command == "search" else ""
        print(f"kdnas: error: interrupted{again}", file=sys.stderr)
        return 128 + (signal.SIGTERM if _terminated else getattr(err, "signum", signal.SIGINT))
    except OSError as err:  # a file system or network failure during the run, named by its file or address
        logger.debug("details", exc_info=True)
        print(f"kdnas: error: {err}", file=sys.stderr)
        return 1
    except Exception as err:
        from optuna.exceptions import StorageInternalError
        from sqlalchemy.exc import DBAPIError

        from kdnas.study.storage import mask_url

        if not isinstance(err, (StorageInternalError, DBAPIError)):
            raise
        reason = mask_url(first_line(err.__cause__ or err))
        print(
            f"kdnas: error: lost the storage connection ({reason}); run the same command again to resume",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
