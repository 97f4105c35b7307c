"""The results log: JSON lines, one record per finished job, appended atomically enough to survive kills.

Each record is written with a single write() of one line and fsynced. A process killed mid-write can
leave at most a truncated last line, which readers skip (and the job, having no complete record, runs
again). Records are deduplicated by job key, so a job recorded twice counts once.

Each line carries a checksum, ``crc``: the CRC-32 (zlib) of the record's canonical JSON (sorted keys,
the line as written) without that field, as 8 hex digits. A record changed after it was written (one
edited digit of an accuracy) fails it and is skipped like a torn line: counted, named, never used, and
its job runs again. Records written before the field existed (fastroar 0.1.0 and early 0.2) have none and
are still read. Readers hand records back without the field, as they were before it was added.
"""
from __future__ import annotations

import json
import math
import os
import zlib
from pathlib import Path
from typing import Any, Callable, Mapping

from fastroar.engine.faults import fault_point

CHECKSUM_FIELD = "crc"


def checksum(record: dict[str, Any]) -> str:
    """CRC-32 of the record's canonical JSON (without its checksum field), as 8 hex digits."""
    body = {k: v for k, v in record.items() if k != CHECKSUM_FIELD}
    return f"{zlib.crc32(json.dumps(body, sort_keys=True).encode()):08x}"


def _text(v: Any) -> bool:
    return isinstance(v, str) and bool(v)


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _index(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


# The fields the readers of each log use, and what they must hold: a record lacking one or holding
# something else (accuracy null or "0.5x", no seed) is unreadable, as a torn line is.
RETRAIN_FIELDS: dict[str, Callable[[Any], bool]] = {
    "model": _text, "attribution": _text, "k": lambda v: _number(v) and 0 < v < 1,
    "direction": lambda v: v in ("top", "bottom"), "seed": _index,
    "accuracy": lambda v: _number(v) and 0 <= v <= 1,
}
ROAD_FIELDS: dict[str, Callable[[Any], bool]] = {
    "model": _text, "attribution": _text, "k": lambda v: _number(v) and 0 < v < 1, "seed": _index,
    "noise": _number, "road": _number,
}


class Skipped(list):
    """The 1-based numbers of the lines that hold no usable record (torn by a kill, garbage, fields missing
    or wrong), in order; `damaged`: those of them whose record fails its checksum."""

    def __init__(self) -> None:
        super().__init__()
        self.damaged: list[int] = []

    def note(self, path: Path) -> str:
        """One line saying what was skipped, or "" when nothing was."""
        if not self:
            return ""
        lines = ", ".join(map(str, self[:5])) + (", ..." if len(self) > 5 else "")
        damaged = (f"; {len(self.damaged)} of them fail their checksum (changed after they were written)"
                   if self.damaged else "")
        return f"{len(self)} unreadable line(s) of {path} skipped (line {lines}){damaged}"


def read_results(path: Path, fields: Mapping[str, Callable[[Any], bool]] | None = None) -> dict[str, dict[str, Any]]:
    """Records by job key; malformed (truncated, damaged) lines are ignored (see read_results_checked)."""
    return read_results_checked(path, fields)[0]


def read_results_checked(path: Path, fields: Mapping[str, Callable[[Any], bool]] | None = None
                         ) -> tuple[dict[str, dict[str, Any]], Skipped]:
    """(records by job key, the lines that hold no usable record: torn by a kill, garbage, failing their
    checksum, or, given `fields` {name: check}, lacking one of them or holding a value its check refuses)."""
    records: dict[str, dict[str, Any]] = {}
    skipped = Skipped()
    if not path.exists():
        return records, skipped
    with open(path, "rb") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError):
                skipped.append(number)
                continue
            if not (isinstance(rec, dict) and isinstance(rec.get("key"), str)):
                skipped.append(number)
                continue
            if CHECKSUM_FIELD in rec and rec.pop(CHECKSUM_FIELD) != checksum(rec):
                skipped.append(number)
                skipped.damaged.append(number)
                continue
            if fields and not all(name in rec and ok(rec[name]) for name, ok in fields.items()):
                skipped.append(number)
                continue
            records.setdefault(rec["key"], rec)
    return records, skipped


def append_result(path: Path, record: dict[str, Any]) -> None:
    """Appends `record` (with its checksum field) as one line, fsynced."""
    path.parent.mkdir(parents=True, exist_ok=True)
    stamped = {**record, CHECKSUM_FIELD: checksum(record)}
    line = (json.dumps(stamped, sort_keys=True) + "\n").encode()
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
