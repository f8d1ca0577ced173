"""Output directories: checked up front, so a path that cannot be written is one clear error, not a traceback."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from kdnas.config import ConfigError
from kdnas.study.records import STUDENT_FILES


def writable_dir(path: Path, what: str) -> Path:
    """Create ``path`` (with its parents) if needed and check a file can be written in it; ``what`` names the
    setting or flag in the error."""
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{what}: {path} is a file, not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as err:
        raise ConfigError(f"{what}: cannot write to {path}: {err.strerror or err}") from None
    return path


def missing_student_files(directory: Path) -> list[str]:
    """The files a saved student needs that ``directory`` lacks (all of them when it is no directory)."""
    return [name for name in STUDENT_FILES if not (directory / name).is_file()]


def files_digest(files: Iterable[Path]) -> str:
    """SHA-256 over ``files`` in the order given, each by its name and content."""
    digest = hashlib.sha256()
    for file in files:
        digest.update(file.name.encode())
        with file.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def student_digest(directory: Path) -> str:
    """SHA-256 over a saved student's files (:data:`~kdnas.study.records.STUDENT_FILES`), by name and content."""
    return files_digest(directory / name for name in STUDENT_FILES)


@contextmanager
def atomic_path(file: Path, suffix: str = ".tmp") -> Iterator[Path]:
    """A temporary path of its own beside ``file`` to write to: when the block ends it replaces ``file``
    (``os.replace``), so readers see the whole file or none; a failed write removes it (a killed one leaves only a
    dot-file)."""
    file.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=file.parent, prefix=f".{file.name}.", suffix=suffix)
    os.close(handle)
    try:
        yield Path(tmp)
        os.replace(tmp, file)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomically(file: Path, data: Any) -> None:
    """Write ``data`` as JSON to ``file`` so that readers see the whole file or none (:func:`atomic_path`)."""
    with atomic_path(file) as tmp:
        tmp.write_text(json.dumps(data))
