"""Errors a user can cause. The CLI prints their message (which names the fix) and exits non-zero, without a
traceback."""
from __future__ import annotations


class FastroarError(Exception):
    """Base class: a problem with the user's input or workdir, with a message that says how to fix it."""


class ConfigError(FastroarError, ValueError):
    """A bad option or config value (unknown dataset, k outside (0, 1), negative epsilon, ...)."""


class MissingInputError(FastroarError, FileNotFoundError):
    """A stage's inputs are not there (run the earlier stage first)."""


class StoreMismatchError(FastroarError):
    """An existing output was made from different inputs (another model, dataset or attribution)."""


class StoreCorruptError(FastroarError):
    """An output on disk no longer matches the checksum recorded when it was written (truncated or damaged)."""


class BusyError(FastroarError):
    """Another process is running the same stage on the same workdir."""


class BetonError(FastroarError, ValueError):
    """A .beton file is missing its sidecar, truncated or corrupted."""


class UserCodeError(FastroarError):
    """Code or files the user brought (an attribution function, precomputed scores, an architecture factory,
    a checkpoint) did not give what fastroar needs; the message names which, where and what differs."""
