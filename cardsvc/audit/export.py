"""The audit anchors' copy outside the database: JSON lines in files.

Each anchor is appended as one line to ``<dir>/audit-anchors-<UTC date>.jsonl`` with one
``write`` on a descriptor opened ``O_APPEND`` and fsynced before the anchor counts as written
(the folder too when the file is new). Operators ship these files where the database's
administrators cannot rewrite them; verification reads a folder of them or one file.
Blocking IO: the service calls these in a thread.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Iterator
from pathlib import Path

FILE_PREFIX = "audit-anchors-"
FILE_SUFFIX = ".jsonl"


def file_for(directory: Path, at: dt.datetime) -> Path:
    return directory / f"{FILE_PREFIX}{at.astimezone(dt.UTC).date().isoformat()}{FILE_SUFFIX}"


def append_line(directory: Path, at: dt.datetime, line: str) -> Path:
    """Append ``line`` to the day's file and fsync it; returns the file."""
    directory.mkdir(mode=0o750, parents=True, exist_ok=True)
    path = file_for(directory, at)
    created = not path.exists()
    data = (line + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
    try:
        written = os.write(fd, data)
        if written != len(data):  # a full disk: say so rather than leave half a line
            raise OSError(f"short write to {path.name} ({written} of {len(data)} bytes)")
        os.fsync(fd)
    finally:
        os.close(fd)
    if created:
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    return path


def iter_lines(path: Path) -> Iterator[tuple[str, str]]:
    """Every non-empty line of the anchor files at ``path`` (a folder of them, or one file)
    as ``(where, text)`` with ``where`` = ``<file name>:<line number>``; none if absent."""
    if path.is_dir():
        files = sorted(path.glob(f"{FILE_PREFIX}*{FILE_SUFFIX}"))
    else:
        files = [path] if path.exists() else []
    for file in files:
        with file.open(encoding="utf-8", errors="replace") as lines:
            for number, line in enumerate(lines, start=1):
                if line.strip():
                    yield f"{file.name}:{number}", line.rstrip("\n")
