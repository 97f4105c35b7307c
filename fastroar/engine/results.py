"""The results log: JSON lines, one record per finished job, appended atomically enough to survive kills.

Each record is written with a single write() of one line and fsynced. A process killed mid-write can
leave at most a truncated last line, which readers skip (and the job, having no complete record, runs
again). Records are deduplicated by job key, so a job recorded twice counts once.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from fastroar.engine.faults import fault_point


def read_results(path: Path) -> dict[str, dict[str, Any]]:
    """Records by job key; malformed (truncated) lines are ignored."""
    return read_results_checked(path)[0]


def read_results_checked(path: Path) -> tuple[dict[str, dict[str, Any]], list[int]]:
    """(records by job key, 1-based numbers of the lines that hold no record: torn by a kill, or garbage)."""
    records: dict[str, dict[str, Any]] = {}
    unreadable: list[int] = []
    if not path.exists():
        return records, unreadable
    with open(path, "rb") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError):
                unreadable.append(number)
                continue
            if isinstance(rec, dict) and isinstance(rec.get("key"), str):
                records.setdefault(rec["key"], rec)
            else:
                unreadable.append(number)
    return records, unreadable


def append_result(path: Path, record: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    line = (json.dumps(record, sort_keys=True) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        # A torn line from an earlier kill must not swallow this record: start on a fresh line.
        if os.fstat(fd).st_size and not _ends_with_newline(path):
            line = b"\n" + line
        fault_point("results.before_append")
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)


def _ends_with_newline(path: Path) -> bool:
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"
