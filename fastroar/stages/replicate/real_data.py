"""The real-data experiments of `fastroar replicate --data-root ROOT`: the paper's Sec. 5 claims on BlockMNIST
(built from real MNIST) and Fashion-MNIST, by the same experiments as the workdir's (block_experiment,
variant_experiment, diffroar_experiment) run on the CPU profiles configs/blockmnist-cpu.yaml and
configs/fashion-mnist-cpu.yaml, each in its own sub-workdir of <workdir>/replicate/.

Where ROOT lacks a dataset (or no --data-root is given) the experiment is not run and its result says so and
how to get the data. Fashion-MNIST is also taken from Debian's dataset-fashion-mnist package when ROOT lacks
it and the package is installed.
"""
from __future__ import annotations

import inspect
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from fastroar.config import Config
from fastroar.datasets.native import INSTALLED, LAYOUTS, Layout
from fastroar.datasets.registry import REGISTRY
from fastroar.errors import MissingInputError
from fastroar.stages.artifacts import load_model, load_prepared
from fastroar.stages.contract import Context, resolve_config
from fastroar.stages.prepare import prepare
from fastroar.stages.replicate.block import block_experiment, variant_experiment
from fastroar.stages.replicate.diffroar import diffroar_experiment
from fastroar.stages.replicate.measures import sub_workdir
from fastroar.stages.replicate.results import RealData, RealDataAbsent
from fastroar.stages.train import train

# --quick: a small MLP for both profiles, one epoch, two levels, the fewest seeds an interval needs (tests;
# not for conclusions)
QUICK_REAL = ["model.arch=mlp2", "model.params={width: 64}", "train.epochs=1", "retrain.epochs=1",
              "retrain.seeds=2", "levels=[0.1,0.5]", "attributions=[gradient]"]
FETCH_SCRIPT = "../shared/data/fetch-real-data.sh ROOT"   # the development machine's copy of the data


@dataclass(frozen=True)
class RealDataset:
    """A dataset of the real-data claims: the profile config it runs, the files it reads (`source`, a
    dataset of fastroar.datasets.native) and how a user gets them."""
    name: str
    config: str
    source: str
    get_it: str


REAL_DATASETS = (
    RealDataset("blockmnist", "blockmnist-cpu", "mnist",
                "torchvision's layout ROOT/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz] "
                "(`fastroar prepare -d mnist --data-root ROOT --download` fetches it)"),
    RealDataset("fashion-mnist", "fashion-mnist-cpu", "fashion-mnist",
                "torchvision's layout ROOT/FashionMNIST/raw/*-ubyte[.gz], or Debian's `dataset-fashion-mnist` "
                f"package (apt-get install dataset-fashion-mnist: {INSTALLED['fashion-mnist']})"),
)


def reads_from_disk(dataset: str) -> bool:
    """Whether a dataset of the registry is read from --data-root (its builder takes a root)."""
    builder = REGISTRY.get(dataset)
    return builder is not None and "root" in inspect.signature(builder).parameters


def locate(source: str, root: str | Path | None) -> Path | None:
    """The root holding all files of `source` (ROOT, else an installed package's folder), or None; None
    without a ROOT (the real-data experiments take hours: they run only when asked for)."""
    if not root:
        return None
    candidates = [Path(root).expanduser()]
    if source in INSTALLED:
        candidates.append(INSTALLED[source])
    for c in candidates:
        if c.is_dir() and not Layout(source, c).missing():
            return c.resolve()
    return None


def absent_note(spec: RealDataset, root: str | Path | None) -> str:
    where = (f"ROOT {root} holds no {spec.source} ({LAYOUTS[spec.source]})" if root
             else "no --data-root given")
    return (f"not run: {where}; get it with `{FETCH_SCRIPT}` on the development machine, or as {spec.get_it}; "
            f"then `fastroar replicate --data-root ROOT`")


def real_configs(root: str | Path | None, *, quick: bool, device: str | None,
                 overrides: Sequence[str] = ()) -> dict[str, Config | None]:
    """Each real dataset's config (its CPU profile, the data's root, --quick's settings, then `overrides`),
    or None where the data are absent. Resolved before anything runs, so a bad override fails first."""
    out: dict[str, Config | None] = {}
    for spec in REAL_DATASETS:
        where = locate(spec.source, root)
        if where is None:
            out[spec.name] = None
            continue
        sets = [f"dataset.params.root={str(where)!r}"] + (QUICK_REAL if quick else []) + list(overrides)
        if device:
            sets.append(f"device={device}")
        out[spec.name] = resolve_config(dataset=spec.config, overrides=sets)
    return out


def real_data_experiments(out_dir: Path, root: str | Path | None, *, quick: bool, device: str | None,
                          progress: bool, log: Callable, overrides: Sequence[str] = ()
                          ) -> dict[str, RealData | RealDataAbsent]:
    """The real-data experiments by dataset name; a dataset whose files are absent or unreadable (a
    checksum mismatch, a truncated file) gets a RealDataAbsent saying why and how to get it."""
    cfgs = real_configs(root, quick=quick, device=device, overrides=overrides)
    out: dict[str, RealData | RealDataAbsent] = {}
    for spec in REAL_DATASETS:
        cfg = cfgs[spec.name]
        if cfg is None:
            out[spec.name] = RealDataAbsent(dataset=spec.name, config=spec.config, note=absent_note(spec, root))
            log(f"[replicate] real data: {spec.name} {out[spec.name].note}")
            continue
        t0 = time.perf_counter()
        try:
            out[spec.name] = run_real(spec, cfg, out_dir, quick=quick, progress=progress, log=log)
        except MissingInputError as e:
            out[spec.name] = RealDataAbsent(dataset=spec.name, config=spec.config,
                                            note=f"not run: {e}; or get the data as {spec.get_it}")
            log(f"[replicate] real data: {spec.name} {out[spec.name].note}")
            continue
        out[spec.name].seconds = round(time.perf_counter() - t0, 1)
        log(f"[replicate] real data: {spec.name} in {out[spec.name].seconds:.1f}s")
    return out


def run_real(spec: RealDataset, cfg: Config, out_dir: Path, *, quick: bool, progress: bool, log: Callable) -> RealData:
    """One dataset's experiments: BlockMNIST gets the gradient grids, localization and its -Top variant;
    both get DiffROAR standard vs robust (precompute and retrain run when their records are missing)."""
    wd = sub_workdir(out_dir, f"real-{spec.name}", [cfg], quick)
    ctx = Context(cfg, wd, log, progress)
    prefix = f"real_{spec.name}"
    block = variant = None
    if spec.name == "blockmnist":
        block = block_experiment(ctx, out_dir, f"{prefix}_gradients.png")
        variant = variant_experiment(ctx, out_dir, quick, f"{prefix}-top_gradients.png")
        hashes = {n: m.hash for n, m in block.models.items()}
    else:
        prepared, _ = prepare(ctx)
        train(ctx)
        hashes = {m.name: load_model(wd, m.name, prepared)[1]["hash"] for m in cfg.models}
    prepared = load_prepared(cfg, wd)
    diffroar = diffroar_experiment(ctx, prepared.meta["key"], hashes, out_dir, fill_missing=True,
                                   png_name=f"{prefix}_diffroar.png")
    return RealData(dataset=spec.name, config=spec.config, root=str(cfg.dataset.params["root"]),
                    workdir=str(wd.root), n_test=int(len(prepared.arrays("test")[1])),
                    min_test_acc=cfg.train.min_test_acc, block=block, variant=variant, diffroar=diffroar)
