"""Shared helpers of the benchmark scripts: where SST-2 is, its config sections, common flags, machine facts, JSON
results, a page rendered to PNG."""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

import kdnas

REPO = Path(__file__).resolve().parents[1]
SST2_ENV = "KDNAS_SST2_DIR"
DEFAULT_SST2 = REPO / ".." / "shared" / "data" / "sst2"


def sst2_dir(cli_value: str | None) -> Path | None:
    """The SST-2 folder (``train.tsv`` + ``dev.tsv``) from the flag, ``$KDNAS_SST2_DIR`` or beside the checkout."""
    directory = Path(cli_value or os.environ.get(SST2_ENV) or DEFAULT_SST2).resolve()
    return directory if (directory / "train.tsv").is_file() and (directory / "dev.tsv").is_file() else None


def skip(name: str, reason: str) -> None:
    """Say why the benchmark is skipped and exit 0 (a missing dataset is not a failure)."""
    print(f"{name}: skipped: {reason}")
    sys.exit(0)


def require_sst2(name: str, cli_value: str | None, *, configure_logging: bool = True) -> Path:
    """The SST-2 folder (see :func:`sst2_dir`), or skip benchmark ``name`` cleanly (exit 0) when there is none.

    With ``configure_logging`` (the default), INFO logging with timestamps is set up once the data is found.
    """
    data = sst2_dir(cli_value)
    if data is None:
        skip(name, "no SST-2 train.tsv/dev.tsv found (pass --data or set KDNAS_SST2_DIR)")
    if configure_logging:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    return data


def sst2_sections(
    data: Path, train_samples: int, teacher_epochs: float = 1.0, *, gpt2_teacher: bool = True
) -> dict[str, Any]:
    """The ``data`` and ``teachers`` config sections shared by the benchmarks.

    ``data``: SST-2 ``train.tsv``/``dev.tsv`` from ``data``, sequences of 64 tokens, ``train_samples`` training
    examples. ``teachers``: MiniLM fine-tuned for ``teacher_epochs`` epochs and, with ``gpt2_teacher``, a small GPT-2
    trained from scratch for 3 epochs.
    """
    teachers: list[dict[str, Any]] = [
        {"name": "minilm", "model": "minilm", "fit": {"epochs": teacher_epochs, "learning_rate": 5e-5}},
    ]
    if gpt2_teacher:
        teachers.append(
            {
                "name": "gpt2",
                "model": "gpt2",
                "scratch": {"layers": 2, "hidden": 256, "heads": 4, "vocab_size": 8000},
                "fit": {"epochs": 3, "learning_rate": 5e-4},
            }
        )
    return {
        "data": {
            "source": "files",
            "train_file": str(data / "train.tsv"),
            "validation_file": str(data / "dev.tsv"),
            "max_seq_length": 64,
            "max_train_samples": train_samples,
        },
        "teachers": teachers,
    }


def add_common_args(
    parser: argparse.ArgumentParser, *, name: str, train_samples: int, output_dir: str | None = None
) -> None:
    """Add the flags every benchmark has: ``--data``, ``--train-samples`` (default ``train_samples``), ``--out``
    (default ``benchmarks/results/<name>.json``) and, when ``output_dir`` is given, ``--output-dir`` (default
    ``runs/<output_dir>`` in the checkout)."""
    parser.add_argument(
        "--data",
        help="SST-2 folder with train.tsv and dev.tsv (default: $KDNAS_SST2_DIR or "
        "../shared/data/sst2 beside the checkout)",
    )
    parser.add_argument("--train-samples", type=int, default=train_samples)
    if output_dir is not None:
        parser.add_argument("--output-dir", default=str(REPO / "runs" / output_dir))
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / f"{name}.json"))


def parse_student(text: str) -> dict[str, int]:
    """A student architecture from ``"layers,heads,head_dim,ffn_ratio"`` (e.g. ``"2,4,32,4"``)."""
    layers, heads, head_dim, ffn = (int(v) for v in text.split(","))
    return {"num_layers": layers, "num_heads": heads, "head_dim": head_dim, "ffn_ratio": ffn}


def fit_teachers_timed(config: Any, task: Any) -> tuple[list[Any], float]:
    """Fit ``config``'s teachers on ``task`` and cache their logits under ``<output_dir>/cache`` (where a search and
    :func:`kdnas.prepare_students` read them).

    Returns the teachers' reference records and the seconds both steps took.
    """
    started = time.perf_counter()
    kdnas.fit_teachers(config, task)
    references, _ = kdnas.teacher_reference(config, task, Path(config.output_dir) / "cache")
    return references, time.perf_counter() - started


def machine() -> dict[str, Any]:
    """Facts that make a figure comparable: CPU, cores, torch, date."""
    return {
        "cpu": kdnas.device_name(torch.device("cpu")),
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d"),
    }


def write_result(path: str | Path, payload: dict[str, Any]) -> Path:
    """Write ``payload`` (plus machine facts) as indented JSON at ``path``, with paths inside the checkout written
    relative to it (``./…``, ``../shared/…``): a result holds no local absolute path."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps({**payload, "machine": machine()}, indent=2)
    out.write_text(text.replace(str(REPO.parent) + "/", "../").replace("../" + REPO.name + "/", "./"))
    return out


def screenshot(html_path: Path, png_path: Path) -> str | None:
    """``html_path`` rendered to ``png_path`` with headless chromium; the PNG's path (relative to the repository
    when inside it), or None without chromium or when it wrote nothing."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        return None
    subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            f"--screenshot={png_path}",
            "--window-size=1120,640",
            "--virtual-time-budget=5000",
            html_path.as_uri(),
        ],
        capture_output=True,
        timeout=120,
    )
    if not png_path.exists():
        return None
    return str(png_path.relative_to(REPO)) if png_path.is_relative_to(REPO) else str(png_path)


TASK_DATA = {"sst2": ("train.tsv", "dev.tsv"), "banking77": ("train.tsv", "test.tsv")}


def task_config(name: str, task: str, *, data: str | None, train_samples: int | None, output_dir: str) -> Any:
    """The kdnas config of ``task`` with ``output_dir``: the built-in demo; ``sst2`` (:func:`sst2_sections`, the
    MiniLM teacher fitted on the same ``train_samples`` rows for 1 epoch); or ``banking77``
    (``examples/banking77.yaml``, every label unless ``train_samples``). The data is read from ``data`` (default
    ``../shared/data/<task>`` beside the checkout); without it benchmark ``name`` is skipped cleanly."""
    if task == "demo":
        return kdnas.load_config({"output_dir": output_dir})
    directory = Path(data or REPO / ".." / "shared" / "data" / task).resolve()
    train, evaluation = TASK_DATA[task]
    if not (directory / train).is_file() or not (directory / evaluation).is_file():
        skip(name, f"no {task} {train}/{evaluation} in {directory} (pass --data)")
    if task == "sst2":
        return kdnas.load_config(
            {"output_dir": output_dir, **sst2_sections(directory, train_samples or 2000, gpt2_teacher=False)}
        )
    overrides = [
        f"output_dir={output_dir}",
        f"data.train_file={directory / train}",
        f"data.validation_file={directory / evaluation}",
    ]
    if train_samples:
        overrides.append(f"data.max_train_samples={train_samples}")
    return kdnas.load_config(REPO / "examples" / "banking77.yaml", overrides)
