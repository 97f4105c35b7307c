"""fastroar: package metadata and the compiled extension ``fastroar._C``.

The extension's CPU kernels are always built. Its CUDA kernels are added when a CUDA toolkit (nvcc)
is found and torch is a CUDA build, unless ``FASTROAR_NO_CUDA=1``. Without a CUDA toolkit the package
builds and works CPU-only. Install with ``python -m pip install --no-build-isolation -e .`` (torch
must already be installed: the extension compiles against it).

Environment knobs: ``FASTROAR_NO_CUDA=1`` (CPU-only build), ``TORCH_CUDA_ARCH_LIST`` (default: the
visible GPU's architecture, or "8.0;9.0+PTX" when no GPU is visible), ``CUDA_HOME``, ``MAX_JOBS``.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import find_namespace_packages, setup
from setuptools.command.build_py import build_py as _build_py

ROOT = Path(__file__).resolve().parent


def read_version() -> str:
    text = (ROOT / "fastroar" / "__init__.py").read_text(encoding="utf-8")
    m = re.search(r"""^__version__\s*=\s*["']([^"']+)["']""", text, re.M)
    if not m:
        raise RuntimeError("fastroar/__init__.py defines no __version__")
    return m.group(1)


def log(msg: str) -> None:
    print(f"[fastroar setup] {msg}", file=sys.stderr)


def find_cuda_home() -> str | None:
    """The CUDA toolkit root: $CUDA_HOME / $CUDA_PATH, else the one holding nvcc (wrapper scripts
    on PATH are followed to /usr/local/cuda when their own prefix holds no CUDA headers)."""
    for var in ("CUDA_HOME", "CUDA_PATH"):
        home = os.environ.get(var)
        if home and (Path(home) / "bin" / "nvcc").exists():
            return home
    candidates = []
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates += [Path(nvcc).resolve().parent.parent, Path(nvcc).parent.parent]
    candidates.append(Path("/usr/local/cuda"))
    for home in candidates:
        if (home / "bin" / "nvcc").exists() and (home / "include" / "cuda_runtime.h").exists():
            return str(home)
    return None


def nvcc_version(home: str) -> tuple[int, int] | None:
    try:
        out = subprocess.run([str(Path(home) / "bin" / "nvcc"), "--version"], capture_output=True, text=True,
                             timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    m = re.search(r"release (\d+)\.(\d+)", out)
    return (int(m.group(1)), int(m.group(2))) if m else None


def want_cuda() -> tuple[bool, str, int]:
    """Whether to compile the CUDA kernels, why (printed), and the reason code the library reports
    (torch.ops.fastroar.build_info): 1 FASTROAR_NO_CUDA, 2 no usable toolkit, 3 torch without CUDA."""
    if os.environ.get("FASTROAR_NO_CUDA", "") not in ("", "0"):
        return False, "FASTROAR_NO_CUDA is set", 1
    try:
        import torch
    except ImportError:
        return False, "torch is not installed", 3
    if torch.version.cuda is None:
        return False, "torch is not a CUDA build", 3
    home = find_cuda_home()
    if home is None:
        return False, "no CUDA toolkit (nvcc) found", 2
    ver = nvcc_version(home)
    if ver is None:
        return False, f"nvcc under {home} does not run", 2
    if ver[0] != int(torch.version.cuda.split(".")[0]):
        return False, f"CUDA toolkit {ver[0]}.{ver[1]} does not match torch's CUDA {torch.version.cuda}", 2
    os.environ["CUDA_HOME"] = home  # read by torch.utils.cpp_extension at import
    return True, f"CUDA toolkit {ver[0]}.{ver[1]} at {home}", 0


def extensions() -> tuple[list, dict]:
    """The fastroar._C extension (CPU, plus CUDA when available) and the build command class."""
    try:
        import torch  # noqa: F401
    except ImportError:
        log("torch is not installed: building without fastroar._C (the Numba kernels are used)")
        return [], {}
    with_cuda, why, off_code = want_cuda()
    log(("building CUDA kernels: " if with_cuda else "CPU-only extension: ") + why)
    from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension

    cxx = ["-O3", "-fopenmp", "-ffp-contract=off"]
    sources = ["csrc/rank_mask.cpp", "csrc/stacked_mlp.cpp", "csrc/sparse_input.cpp", "csrc/mlp_train.cpp"]
    define_macros = [] if with_cuda else [("FASTROAR_CUDA_OFF", str(off_code))]
    kwargs = dict(extra_link_args=["-fopenmp"])
    if with_cuda:
        import torch

        if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
            os.environ["TORCH_CUDA_ARCH_LIST"] = "8.0;9.0+PTX"
        log(f"TORCH_CUDA_ARCH_LIST={os.environ.get('TORCH_CUDA_ARCH_LIST', '(the visible GPU)')}")
        sources.append("csrc/rank_mask_cuda.cu")
        define_macros.append(("FASTROAR_WITH_CUDA", None))
        ext = CUDAExtension(
            "fastroar._C", sources, define_macros=define_macros,
            extra_compile_args={"cxx": cxx, "nvcc": ["-O3", "-Xcompiler", "-ffp-contract=off"]}, **kwargs)
    else:
        ext = CppExtension("fastroar._C", sources, define_macros=define_macros,
                           extra_compile_args={"cxx": cxx}, **kwargs)
    os.environ.setdefault("MAX_JOBS", str(max(1, min(4, os.cpu_count() or 1))))
    return [ext], {"build_ext": BuildExtension.with_options(no_python_abi_suffix=False)}


def package_data() -> list[str]:
    """Data files shipped inside the package (configs, class maps, ...), relative to fastroar/."""
    pkg = ROOT / "fastroar"
    return sorted(str(p.relative_to(pkg)) for ext in ("yaml", "yml", "json", "txt", "csv")
                  for p in pkg.rglob(f"*.{ext}") if "__pycache__" not in p.parts)


class build_py(_build_py):
    """Also copies the top-level configs/*.yaml into the built package as fastroar/configs/.

    configs/ stays the one source of truth in the repository; fastroar.config.config_dir() reads it there
    (source tree, editable install) and falls back to fastroar/configs/ inside an installed package, which
    exists only in what `pip install .` (non-editable) builds. package_data cannot do this (it only ships
    files under the package directory), and data_files would put them outside the package.
    """

    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):  # editable installs read the repository's configs/
            return
        target = Path(self.build_lib) / "fastroar" / "configs"
        target.mkdir(parents=True, exist_ok=True)
        for src in sorted((ROOT / "configs").glob("*.yaml")):
            shutil.copy2(src, target / src.name)


ext_modules, cmdclass = extensions()
cmdclass["build_py"] = build_py

setup(
    name="fastroar",
    version=read_version(),
    description="DiffROAR evaluation of feature attributions (Shah, Jain, Netrapalli, NeurIPS 2021) at scale",
    long_description=(ROOT / "README.md").read_text(encoding="utf-8") if (ROOT / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    # namespace-aware: a sub-package still without __init__.py ships too
    packages=find_namespace_packages(include=["fastroar", "fastroar.*"], exclude=["*.__pycache__", "*.__pycache__.*"]),
    package_data={"fastroar": package_data()},
    include_package_data=True,
    python_requires=">=3.10",
    # What `import fastroar` and every stage need at run time. torch comes first and is not listed: pick
    # the build for your machine (tools/install.sh pins the tested one). ffcv compiles against OpenCV and
    # TurboJPEG and imports torch while it builds: install it with --no-build-isolation (tools/install.sh).
    install_requires=[
        "numpy>=2", "numba>=0.60", "zarr>=3", "click>=8.1", "PyYAML>=6", "tqdm>=4.66", "matplotlib>=3.8",
        "scikit-learn>=1.4", "scipy>=1.11", "pillow>=10", "captum>=0.7", "kornia>=0.7", "torchvision",
        "ffcv>=1.0.2", "pandas>=2", "pydantic>=2.5",
    ],
    extras_require={"ray": ["ray>=2.40"], "test": ["pytest>=8"], "timm": ["timm"]},
    entry_points={"console_scripts": ["fastroar=fastroar.cli:main"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    zip_safe=False,
)
