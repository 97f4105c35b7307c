"""Which CPU kernels torch runs: pinned, so that a config gives the same bits on any x86 CPU.

torch picks its vectorized ATen kernels (``ATEN_CPU_CAPABILITY``) and oneDNN its convolution code
(``ONEDNN_MAX_CPU_ISA``) by the CPU it finds. AVX2 and AVX-512 kernels sum in other orders, and training
amplifies the low bits: the same config gave other base-model hashes and DiffROAR rows up to 0.035 apart
on an AVX-512 machine than on an AVX2 one. fastroar therefore pins both to AVX2 (which every x86 CPU of
the last decade has, and where a CPU lacks it torch falls back to its plain kernels) before torch is
imported: ``import fastroar`` does it, so the CLI, the Python API and Ray workers (which import fastroar
to unpickle a task) all run pinned.

``FASTROAR_CPU_CAPABILITY`` chooses: unset = ``avx2``; ``default`` / ``avx2`` / ``avx512`` pins that
level; ``native`` leaves torch's own choice (and whatever ``ATEN_CPU_CAPABILITY`` the user set). Every
record and base model notes the capability it was made with (`capability()`), so records made unpinned
are told apart. Pinning does not reach GPUs or other architectures: those agree within the interval only.
"""
from __future__ import annotations

import os
import platform
import warnings

PIN_VARIABLE = "FASTROAR_CPU_CAPABILITY"
DEFAULT_PIN = "avx2"
# ATEN_CPU_CAPABILITY level -> the oneDNN ISA ceiling of the same vector width
ONEDNN_ISA = {"default": "SSE41", "avx2": "AVX2", "avx512": "AVX512_CORE"}
CHOICES = (*ONEDNN_ISA, "native")


def requested() -> str:
    """The pin FASTROAR_CPU_CAPABILITY asks for (lower case): a key of ONEDNN_ISA or "native"."""
    choice = os.environ.get(PIN_VARIABLE, "").strip().lower() or DEFAULT_PIN
    if choice not in CHOICES:  # at import time: a warning, not an exception no command could catch
        warnings.warn(f"{PIN_VARIABLE}={choice!r} is not one of {', '.join(CHOICES)}; using {DEFAULT_PIN} "
                      f"(unset it for the default, or `native` to let torch choose)", RuntimeWarning, stacklevel=2)
        return DEFAULT_PIN
    return choice


def pin_cpu_kernels() -> str:
    """Sets ATEN_CPU_CAPABILITY and ONEDNN_MAX_CPU_ISA for the requested pin (x86 only) and returns the pin.
    Effective when it runs before torch's first CPU kernel (torch reads both lazily); `capability()` says
    what torch actually uses."""
    choice = requested()
    if choice != "native" and platform.machine().lower() in ("x86_64", "amd64", "x86", "i686"):
        os.environ["ATEN_CPU_CAPABILITY"] = choice
        os.environ["ONEDNN_MAX_CPU_ISA"] = ONEDNN_ISA[choice]
    return choice


def pinned_environment() -> dict[str, str]:
    """The variables that carry this process's pin to another process (a Ray worker): the choice itself and,
    when pinned, torch's and oneDNN's settings."""
    choice = requested()
    env = {PIN_VARIABLE: choice}
    if choice != "native":
        env |= {name: os.environ[name] for name in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA") if name in os.environ}
    return env


def capability() -> str:
    """The CPU capability torch's kernels run with ("AVX2", "AVX512", "DEFAULT", ...), with "+native"
    appended when fastroar did not pin it. Imports torch."""
    import torch

    level = str(torch.backends.cpu.get_cpu_capability())
    return level if requested() != "native" else f"{level}+native"


# The pin in force: set once, when fastroar is first imported (fastroar/__init__.py imports this module first).
PINNED = pin_cpu_kernels()
