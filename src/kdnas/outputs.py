"""Output directories: checked up front, so a path that cannot be written is one clear error, not a traceback."""

from __future__ import annotations

import tempfile
from pathlib import Path

from kdnas.config import ConfigError
from kdnas.records import STUDENT_FILES


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
