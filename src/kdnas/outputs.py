"""Output directories: checked up front, so a path that cannot be written is one clear error, not a traceback."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterable
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


def write_json_atomically(file: Path, data: Any) -> None:
    """Write ``data`` as JSON to ``file`` so that readers see the whole file or none: a temporary file of its own in
    the same directory, then ``os.replace``; a failed write removes it."""
    file.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=file.parent, prefix=f".{file.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w") as out:
            json.dump(data, out)
        os.replace(tmp, file)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
