"""What stages hand each other: the prepared data, the base models, the rank store's identity of an
attribution, the retrain recipe and the fill value. Each is derived from the config and the workdir in
one place, so that every stage keys, finds and checks them the same way.

torch and the loaders are imported by the functions that use them (devices, loaders, model weights):
what `report` reads here (the prepared data's metadata, the models' hashes, the sweep's records) needs
neither.
"""
from __future__ import annotations

import dataclasses
import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from fastroar.attribution import METHODS
from fastroar.attribution.scores import scan
from fastroar.attribution.user import function_identity, is_reference
from fastroar.config import Config
from fastroar.config.schema import BaseModelSpec
from fastroar.engine.beton import map_beton, read_beton_cached, verify_beton
from fastroar.engine.results import RETRAIN_FIELDS, Skipped, read_results_checked
from fastroar.engine.workspace import SPLITS, Workdir
from fastroar.errors import ConfigError, FastroarError, MissingInputError, StoreMismatchError
from fastroar.keys import digest, file_sha256
from fastroar.method import DIRECTIONS, n_kept, pixel_scale, rank_dtype
from fastroar.metrics.road import DEFAULT_NOISE
from fastroar.metrics.road import METHOD as ROAD_METHOD
from fastroar.models import build_model, state_hash
from fastroar.training.jobs import Job, records_for, sparse_input_wanted, sweep
from fastroar.training.settings import Recipe, airbench_recipe, fast_recipe

if TYPE_CHECKING:
    import torch
    from torch import nn


# ---------------------------------------------------------------- data

# Parameters that say how to obtain data, not what the data are: they do not enter the key.
NON_IDENTITY_PARAMS = ("download", "verify_checksums")
# Generators whose output changed for the same parameters: the version enters the key, so data written by
# an older generator is never taken for the new one's. Datasets not listed keep their keys.
# leakage 2: eq. (2)'s eta*g_j term in the signal block, label-balanced test split.
GENERATOR_VERSIONS = {"leakage": 2}


def dataset_key(cfg: Config) -> str:
    """Names the prepared data by content: dataset name + hash of its parameters (+ generator version)."""
    name = cfg.dataset.name
    params = {k: v for k, v in cfg.dataset.params.items() if k not in NON_IDENTITY_PARAMS}
    ident: dict[str, Any] = {"name": name, "params": params}
    if name in GENERATOR_VERSIONS:
        ident["generator"] = GENERATOR_VERSIONS[name]
    return f"{name}-{digest(ident)}"


def resolve_device(name: str) -> torch.device:
    """The config's device: auto = CUDA when torch sees one, else the CPU."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise FastroarError("device 'cuda' asked for, but torch sees no CUDA device; use --device cpu")
    return torch.device(name)


IN_MEMORY_BYTES = 1 << 30  # Prepared.arrays: larger splits are memory-mapped, not read into memory


@dataclass
class Prepared:
    """A prepared dataset on disk: paths and the metadata the later stages need."""

    dir: Path
    meta: dict[str, Any]

    def beton(self, split: str) -> Path:
        return self.dir / f"{split}.beton"

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.meta["shape"])

    @property
    def d(self) -> int:
        return int(np.prod(self.shape))

    @property
    def num_classes(self) -> int:
        return int(self.meta["num_classes"])

    @property
    def bounds(self) -> tuple[float, float] | None:
        b = self.meta["bounds"]
        return None if b is None else (float(b[0]), float(b[1]))

    def size(self, split: str) -> int:
        return int(self.meta["sizes"][split])

    def data_path(self, mode: str, device: Any, ranks: bool) -> str:
        """"resident" or "ffcv": where both splits (with their rank maps when `ranks`) go under the engine's
        one rule (fastroar.engine.loaders.choose_path) for the config's loader `mode`."""
        from fastroar.engine.loaders.plan import choose_path  # imports torch: not for stages that need none

        itemsize = rank_dtype(self.d).itemsize if ranks else None
        return choose_path(mode, sum(self.size(s) for s in SPLITS), self.shape, itemsize, device)

    def signal(self, split: str) -> np.ndarray | None:
        """(N, d) bool signal-block masks, or None when the dataset has none."""
        path = self.dir / f"signal_{split}.npy"
        return np.load(path) if path.exists() else None

    def arrays(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """All (images, labels) of a split, read back through FFCV (cached per process).

        A split whose images exceed IN_MEMORY_BYTES (ImageNet-scale) comes as a memory-mapped view
        (fastroar.engine.beton.MappedImages: slicing reads just those samples) instead of a copy in memory.
        """
        path = str(self.beton(split))
        if self.size(split) * self.d * np.dtype(self.meta.get("dtype", "uint8")).itemsize > IN_MEMORY_BYTES:
            return map_beton(path)
        return read_beton_cached(path)

    def loader(self, split: str, *, mode: str, batch_size: int, seed: int, train: bool, device: torch.device,
               ranks: Any = None, k: float | None = None, direction: str | None = None, fill: float = 0.0):
        """(loader, path_name) over one split, on the path the engine's plan picks for `mode` (the config's
        `loader`); train=True shuffles (seeded); removed coordinates are set to `fill`."""
        from fastroar.engine.loaders import open_loader

        return open_loader(self.beton(split), mode=mode, batch_size=batch_size, seed=seed, shuffle=train,
                           ranks=ranks, k=k, direction=direction, device=device, fill=fill)


def load_prepared(cfg: Config, workdir: Workdir) -> Prepared:
    """The prepared data of the config's dataset; a clear error when `prepare` has not run."""
    out = workdir.data_dir(dataset_key(cfg))
    if not (out / "meta.json").exists():
        name = cfg.dataset.name
        saved = _saved_dataset(workdir)
        if saved is not None and saved != name:  # a bare `prepare` would prepare the saved config's dataset
            raise MissingInputError(f"dataset {name!r} is not prepared in {workdir.root} (its config.yaml is for "
                                    f"{saved!r}); run `fastroar prepare --workdir {workdir.root} --dataset {name}` "
                                    "first, with this command's other --config/--set/--data-root options")
        raise MissingInputError(f"dataset {name!r} is not prepared in {workdir.root}; "
                                f"run `fastroar prepare --workdir {workdir.root}` first"
                                f"{' with the same --dataset/--config/--set options' if saved else ''}")
    prepared = Prepared(out, json.loads((out / "meta.json").read_text()))
    for split in SPLITS:
        path = prepared.beton(split)
        stat = path.stat() if path.exists() else None
        _verified(str(path), stat and stat.st_size, stat and stat.st_mtime_ns)
    return prepared


def _saved_dataset(workdir: Workdir) -> str | None:
    """The dataset name in the workdir's saved config.yaml (None when there is none or it cannot be read)."""
    import yaml

    try:
        saved = yaml.safe_load((workdir.root / "config.yaml").read_text())
        return str(saved["dataset"]["name"])
    except (OSError, yaml.YAMLError, KeyError, TypeError):
        return None


@functools.lru_cache(maxsize=16)
def _verified(path: str, size: int | None, mtime_ns: int | None) -> None:
    """Size and SHA-256 of a .beton against its sidecar, once per (path, size, mtime) in a process:
    every stage refuses data that was truncated or damaged after `prepare` wrote it."""
    verify_beton(path)


# ---------------------------------------------------------------- base models


def chance_tolerance(chance: float, n_test: int, errors: float = 2.0) -> float:
    """`errors` binomial standard errors, sqrt(p (1 - p) / n), of an accuracy p = `chance` on n_test images."""
    return errors * (chance * (1.0 - chance) / max(1, n_test)) ** 0.5


def at_chance(summary: dict[str, Any], chance: float, n_test: int) -> bool:
    """Whether a base model's clean test accuracy is at or below chance: not above it by more than one
    binomial standard error (chance_tolerance(errors=1)). Such a model learned nothing, and the attributions
    of a model that learned nothing say nothing."""
    acc = summary.get("test_acc")
    return isinstance(acc, (int, float)) and acc <= chance + chance_tolerance(chance, n_test, errors=1.0)


def model_warnings(min_test_acc: float | None, ckpt: dict[str, Any], chance: float, n_test: int) -> list[str]:
    """Why a trained base model is not in the regime its config asks for: clean test accuracy below
    `min_test_acc` (the config's train.min_test_acc), or accuracy under its PGD adversary within two binomial
    standard errors of chance (the test split's majority rate) - i.e. not robust under its eps."""
    summary, name = ckpt["summary"], ckpt["config"]["name"]
    out = []
    floor = float(min_test_acc or 0.0)
    acc = summary.get("test_acc")
    if at_chance(summary, chance, n_test):
        out.append(f"FAILED: base model {name!r} learned nothing: clean test accuracy {acc:.3f} is at or below "
                   f"chance {chance:.3f} (within {chance_tolerance(chance, n_test, 1.0):.3f}); its DiffROAR rows "
                   "(marked FAILED) mean nothing: check its train settings (lr, epochs, adversary eps) and "
                   "train it again")
    elif acc is not None and acc < floor:
        out.append(f"WARNING: base model {name!r} is undertrained: clean test accuracy {acc:.3f} < "
                   f"train.min_test_acc {floor:g} (chance {chance:.3f}); train it longer (train.epochs) before "
                   "reading its attributions")
    robust = summary.get("robust_test_acc")
    if robust is not None and not at_chance(summary, chance, n_test):
        tol = chance_tolerance(chance, n_test)
        if robust <= chance + tol:
            adv = ckpt["config"].get("adversary") or {}
            out.append(f"WARNING: base model {name!r} is not robust: accuracy under its PGD adversary "
                       f"({adv.get('norm')}, eps {adv.get('eps')}) {robust:.3f} is at chance {chance:.3f} "
                       f"(within {tol:.3f})")
    return out


def model_config(cfg: Config, spec: BaseModelSpec) -> dict[str, Any]:
    """Everything a base model depends on (its checkpoint is reused only when this matches). A model
    registered from the user's checkpoint (spec `checkpoint: PATH`) depends on the file's content instead
    of a recipe, seed and adversary."""
    if spec.checkpoint:
        return {"name": spec.name, "arch": cfg.model.arch, "params": cfg.model.params,
                "dataset_key": dataset_key(cfg), "checkpoint_sha256": file_sha256(checkpoint_file(spec))}
    return {
        "name": spec.name, "arch": cfg.model.arch, "params": cfg.model.params,
        "dataset_key": dataset_key(cfg), "recipe": cfg.train.recipe().to_dict(),
        "adversary": spec.adversary.saved() if spec.adversary else None, "seed": spec.seed,
    }


def model_families(cfg: Config) -> dict[str, str]:
    """Each base model's family: the entry of `models` it replicates (`replicates: B`), else itself. A
    family's DiffROAR rows pool its base models (fastroar.metrics.diffroar)."""
    return {m.name: m.replicate_of or m.name for m in cfg.models}


def check_trained(cfg: Config, workdir: Workdir) -> None:
    """StoreMismatchError when a base model of the config was trained (or registered) in `workdir` with
    another model config than the one `cfg` gives it: the check `train` makes, for the stages that read the
    trained models. Without it, `--set train.epochs=2` (or another adversary) on precompute, retrain or
    report would run and label the sweep of a model trained otherwise. Read from model.json (no torch); a
    registered model whose checkpoint file is gone is not checked (its recorded hash still keys it), nor
    anything while the config's data are not prepared (the stage then says to run `prepare`)."""
    if not (workdir.data_dir(dataset_key(cfg)) / "meta.json").exists():
        return
    for spec in cfg.models:
        info = checkpoint_path(workdir, spec.name).with_name("model.json")
        if not info.is_file() or (spec.checkpoint and not Path(spec.checkpoint).expanduser().is_file()):
            continue
        try:
            trained = json.loads(info.read_text()).get("config")
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
            raise StoreMismatchError(f"{info} is damaged (not the JSON `train` writes); delete {info.parent} and "
                                     "rerun `fastroar train`") from None
        wanted = json.loads(json.dumps(model_config(cfg, spec)))
        if trained is not None and trained != wanted:
            raise StoreMismatchError(
                f"base model {spec.name!r} in {info.parent} was trained with another config "
                f"({config_diff(trained, wanted)}); drop the --set/--config that changes it (the workdir's "
                f"config.yaml has the settings it was trained with), or delete {info.parent} and rerun "
                "`fastroar train`")


def checkpoint_file(spec: BaseModelSpec) -> Path:
    """The user's checkpoint file of a registered model (spec `checkpoint: PATH`)."""
    path = Path(spec.checkpoint).expanduser()
    if not path.is_file():
        raise MissingInputError(f"checkpoint {path} of model {spec.name!r} does not exist")
    return path


def checkpoint_path(workdir: Workdir, name: str) -> Path:
    return workdir.model_dir(name) / "model.pt"


def trained_checkpoint(workdir: Workdir, name: str) -> Path:
    """The checkpoint of trained base model `name`; a clear error when `train` has not made it."""
    path = checkpoint_path(workdir, name)
    if not path.exists():
        raise MissingInputError(f"no trained model {name!r} in {workdir.root}; run `fastroar train "
                                f"--workdir {workdir.root}` first")
    return path


def model_hash(workdir: Workdir, name: str, prepared: Prepared) -> str:
    """The state hash of trained base model `name`, what its jobs and rank maps are keyed by: read from the
    model.json that train writes beside the checkpoint, after it (no weights loaded, no torch imported);
    from the checkpoint itself where model.json is missing or older than it."""
    path = trained_checkpoint(workdir, name)
    info = path.with_name("model.json")
    if info.exists() and info.stat().st_mtime_ns >= path.stat().st_mtime_ns:
        recorded = json.loads(info.read_text()).get("hash")
        if isinstance(recorded, str):
            return recorded
    return load_model(workdir, name, prepared)[1]["hash"]


def load_model(workdir: Workdir, name: str, prepared: Prepared) -> tuple[nn.Module, dict[str, Any]]:
    """A trained base model (eval mode, CPU) and its checkpoint dict."""
    from fastroar.models.checkpoint import load_saved  # imports torch

    path = trained_checkpoint(workdir, name)
    ckpt = load_saved(path)
    mcfg = ckpt["config"]
    model = build_model(mcfg["arch"], prepared.shape, prepared.num_classes, **mcfg["params"])
    model.load_state_dict(ckpt["state_dict"])
    if state_hash(model, mcfg) != ckpt["hash"]:
        raise StoreMismatchError(f"{path} is corrupted (its weights do not match their recorded hash); "
                                 f"delete {path.parent} and rerun `fastroar train`")
    return model.eval(), ckpt


def config_diff(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> str:
    """The keys whose values differ, 'recipe.epochs: 3 -> 2, ...' (sections compared key by key)."""
    def text(v: Any) -> str:
        return json.dumps(v, sort_keys=True, default=str)

    parts = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if text(a) == text(b):
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            parts.append(config_diff(a, b, f"{prefix}{k}."))
        else:
            parts.append(f"{prefix}{k}: {a!r} -> {b!r}")
    return ", ".join(parts) or "unknown difference"


# ---------------------------------------------------------------- rank store entries

def attribution_params(cfg: Config, attribution: str) -> dict[str, Any]:
    """Parameters an attribution's scores depend on (recorded in the store's identity)."""
    params = dict(cfg.attribution_params.get(attribution, {}))
    if attribution == "random":
        params.setdefault("seed", 0)
    return params


def scores_path(cfg: Config, attribution: str) -> str | None:
    """PATH of an attribution imported from precomputed scores (config `scores: {NAME: PATH}`), else None."""
    return cfg.scores.get(attribution)


def is_user_function(attribution: str) -> bool:
    """Whether the attribution is the user's `module:function` (not a built-in, captum or scores name)."""
    return attribution not in METHODS and not attribution.startswith("captum:") and is_reference(attribution)


def identity_params(cfg: Config, prepared: Prepared, attribution: str) -> dict[str, Any]:
    """What the store records of an attribution's inputs: its parameters; for a user function also its
    import path and source hash, for precomputed scores the content hash of the scores (built-in and
    captum attributions: the parameters alone, which keeps their store identities unchanged)."""
    path = scores_path(cfg, attribution)
    if path is not None:
        return {"scores_sha256": scan(attribution, path, {s: prepared.size(s) for s in SPLITS}, prepared.shape)}
    params = attribution_params(cfg, attribution)
    if is_user_function(attribution):
        return {"params": params, **function_identity(attribution)}
    return params


def identity(cfg: Config, prepared: Prepared, model_hash: str, attribution: str,
             params: dict[str, Any] | None = None) -> dict[str, Any]:
    """The store identity of an attribution's ranks (`params`: its attribution_params, when already known)."""
    return {
        "model_hash": model_hash, "dataset_key": prepared.meta["key"], "attribution": attribution,
        "attribution_params": identity_params(cfg, prepared, attribution) if params is None else params,
        "levels": list(cfg.levels), "shape": list(prepared.shape),
    }


def reading_identity(cfg: Config, prepared: Prepared, model_hash: str, attribution: str,
                     stored: dict[str, Any] | None) -> tuple[dict[str, Any], str | None]:
    """(the identity to read an entry's ranks with, a WARNING line or None). For the user's module:function
    whose module cannot be imported here, or whose source changed since its ranks were computed, the
    stored identity of the function is taken: saved results stay readable without the user's code, with
    a warning that they cannot be re-verified against it. Other attributions: `identity` as is."""
    if not is_user_function(attribution) or stored is None:
        return identity(cfg, prepared, model_hash, attribution), None
    try:
        fresh = identity(cfg, prepared, model_hash, attribution)
    except FastroarError as e:
        reason = f"its module cannot be imported here ({' '.join(str(e).split())[:120]})"
    else:
        old, new = stored.get("attribution_params") or {}, fresh["attribution_params"]
        if old.get("source_sha256") == new.get("source_sha256") or {**old, "source_sha256": None} != \
                {**new, "source_sha256": None}:
            return fresh, None       # unchanged, or another difference: the store says which
        reason = "its source changed since its ranks were computed"
    return (identity(cfg, prepared, model_hash, attribution, params=stored.get("attribution_params")),
            f"WARNING: attribution {attribution!r}: {reason}; its saved ranks and rows are shown as computed then, "
            "and cannot be re-verified against the function")


# ---------------------------------------------------------------- retraining

def retrain_recipe(cfg: Config, n_train: int | None = None) -> Recipe:
    """The retrain recipe: `paper` is the base models' recipe with the retrain section's overrides
    (epochs, lr, ...); `fast` turns that into a short one-cycle schedule (fastroar.training.fast_recipe;
    its batch size follows the train split's size `n_train`); `airbench` is airbench94's hyperparameters
    (fastroar.training.airbench_recipe, epochs overridden by retrain.fast_epochs)."""
    rt = cfg.retrain
    recipe = Recipe(**{**cfg.train.recipe_overrides(), **rt.recipe_overrides()})
    if rt.recipe == "fast":
        recipe = fast_recipe(recipe, epochs=rt.fast_epochs, n_train=n_train)
    elif rt.recipe == "airbench":
        recipe = airbench_recipe(recipe, epochs=rt.fast_epochs, n_train=n_train)
    return recipe


def fill_value(cfg: Config, prepared: Prepared) -> float:
    """The value removed coordinates take, in model-input units (x/255 for uint8 images): retrain.fill is
    `zero` (the paper's definition, default), `mean` (the scalar mean of the train split's model input,
    what the reference code's early version filled with), or a number. `road` imputes instead
    (imputation()); its value, 0, is what a removed coordinate takes where an image plane keeps none."""
    fill = cfg.retrain.fill
    if fill in ("zero", "road"):
        return 0.0
    if fill == "mean":
        beton = prepared.beton("train")
        st = beton.stat()
        state = (str(beton), st.st_mtime_ns, st.st_size)
        if state not in _TRAIN_MEANS:  # once per process and file state: plan and report both ask
            _TRAIN_MEANS[state] = _train_mean(prepared)
        return _TRAIN_MEANS[state]
    return float(np.float32(fill))


_TRAIN_MEANS: dict[tuple, float] = {}


def imputation(fill: str | float) -> dict[str, Any] | None:
    """How removed coordinates are imputed for retrain.fill `fill` (road: ROAD's noisy linear imputation
    with the estimate stage's default noise, fastroar.stages.imputed), or None (they take fill_value).
    Enters the job key only when set."""
    if fill != "road":
        return None
    return {"method": ROAD_METHOD, "noise": DEFAULT_NOISE, "seed": 0}


def _train_mean(prepared: Prepared) -> float:
    """Mean model input of the train split."""
    images, _ = prepared.arrays("train")
    total, count, step = 0.0, 0, 4096
    for start in range(0, len(images), step):  # in blocks: memory-mapped splits never load whole
        block = np.asarray(images[start:start + step], dtype=np.float64)
        total += float(block.sum())
        count += block.size
    mean = total / max(count, 1)
    return float(np.float32(mean / pixel_scale(prepared.meta["dtype"])))


# ---------------------------------------------------------------- the sweep

MAX_JOBS = 100_000  # models x attributions x levels x directions x seeds: beyond this, a typo
AUTO_FIRST_SEEDS = 3   # retrain.seeds: auto runs this many seeds on every row, then adds where they help


def seed_counts(cfg: Config) -> tuple[int, int]:
    """(seeds every row of the sweep runs, the most seeds a row may get): (n, n) for retrain.seeds = n; for
    auto, AUTO_FIRST_SEEDS first and up to retrain.max_seeds where more seeds still narrow a row's interval
    (the retrain stage decides, fastroar.metrics.intervals)."""
    seeds = cfg.retrain.seeds
    if seeds == "auto":
        return AUTO_FIRST_SEEDS, max(AUTO_FIRST_SEEDS, cfg.retrain.max_seeds)
    return int(seeds), int(seeds)


def select(cfg: Config, key: str, names: Sequence[str] | None) -> list[str]:
    """The config's base models (key "models") or attributions (key "attributions") that a command picks
    with --model / --attribution: all when none are named; ConfigError naming the valid ones otherwise."""
    valid = [m.name for m in cfg.models] if key == "models" else list(cfg.attributions)
    names = list(dict.fromkeys(names or ()))   # --model a --model a: once
    for name in names:
        if name not in valid:
            what = "model" if key == "models" else "attribution"
            raise ConfigError(f"unknown {what} {name!r}: the config's {key} are {', '.join(valid)} "
                              f"(add it to {key} in the config to use it)")
    return list(names or valid)


def sweep_jobs(cfg: Config, workdir: Workdir, prepared: Prepared, *, models: Sequence[str] | None = None,
               attributions: Sequence[str] | None = None, levels: Sequence[float] | None = None,
               directions: Sequence[str] | None = None, n_seeds: int | None = None,
               all_seeds: bool = False, here: bool = True) -> list[Job]:
    """The retraining jobs of the config (or of a selection of it), keyed by everything they depend on:
    the base models' hashes (each must be trained), the data, the retrain recipe, the fill, and whether the
    first layer runs sparse (retrain.sparse_input). Seeds: n_seeds, else the seeds every row runs
    (seed_counts), or with all_seeds the most a row may get. `here`: resolve sparse_input for this machine
    (device, data path, extension: sparse_input_here); without it, jobs get the config's half of the rule
    alone (no torch imported: the report finds their records by either key, sweep_records)."""
    models = select(cfg, "models", models)
    attributions = select(cfg, "attributions", attributions)
    levels = list(dict.fromkeys(float(k) for k in (levels or cfg.levels)))  # --k 0.3 --k 0.30: once
    directions = list(dict.fromkeys(directions or cfg.retrain.directions))
    for k in levels:  # a level that keeps no coordinate (or all) trains on blank (or unmasked) images
        if not 0 < n_kept(k, prepared.d) < prepared.d:
            raise ConfigError(f"k={k:g} keeps {n_kept(k, prepared.d)} of the {prepared.d} coordinates of "
                              f"{cfg.dataset.name} (n = floor(k*d + 1/2)): top-k and bottom-k would not "
                              f"differ; choose k from {0.5 / prepared.d:.3g} to below {1 - 0.5 / prepared.d:.3g}")
    seeds = range(n_seeds or seed_counts(cfg)[1 if all_seeds else 0])
    count = len(models) * len(attributions) * len(levels) * len(directions) * len(seeds)
    if count > MAX_JOBS:
        raise ConfigError(f"the sweep has {count:,} jobs ({len(models)} models x {len(attributions)} attributions x "
                          f"{len(levels)} levels x {len(directions)} directions x {len(seeds)} seeds), more than "
                          f"{MAX_JOBS:,}; select fewer with --model/--attribution/--k/--seeds")
    hashes = {name: model_hash(workdir, name, prepared) for name in models}
    recipe = retrain_recipe(cfg, prepared.size("train")).to_dict()
    setting, arch = cfg.retrain.sparse_input, cfg.model.arch
    wanted = {float(k) for k in levels if sparse_input_wanted(setting, arch, float(k), prepared.d)}
    sparse = bool(wanted) and (not here or sparse_input_here(cfg, prepared))
    impute = imputation(cfg.retrain.fill)
    return sweep(cfg, hashes, prepared.meta["key"], recipe, models, attributions, levels, directions, seeds,
                 fill=fill_value(cfg, prepared), impute=impute,
                 # imputed inputs have no constant fill for the sparse layer to skip: they stay dense
                 sparse_input=lambda k: sparse and k in wanted and impute is None)


def sparse_input_here(cfg: Config, prepared: Prepared) -> bool:
    """Whether the sparse first layer can run here for the config's stacked MLP jobs: the CPU, both splits
    resident (the engine's one rule), the compiled extension (fastroar.training.batched.uses_sparse_input)."""
    from fastroar.training.batched import sparse_available  # imports torch: only when the config wants sparse

    device = resolve_device(cfg.device)
    return prepared.data_path(cfg.loader, device, ranks=True) == "resident" and sparse_available(device)


def recorded_beyond(cfg: Config, workdir: Workdir, prepared: Prepared, records: dict[str, dict[str, Any]],
                    jobs: Sequence[Job]) -> list[Job]:
    """Jobs of the config's settings at levels or seeds beyond its own (`retrain --k 0.2 --seeds 3` on a
    config of levels [0.1] and 1 seed) that have a record: the same job keys retrain wrote them under, so
    every other setting (base models, data, recipe, fill) is the config's. report and load_results include
    them: what was trained is reported, without repeating --k and --seeds."""
    have = {j.key for j in jobs}
    models, attributions = {m.name for m in cfg.models}, set(cfg.attributions)
    extra = [r for key, r in records.items() if key not in have and r["model"] in models
             and r["attribution"] in attributions and r["direction"] in DIRECTIONS]
    if not extra:
        return []
    levels = sorted({float(r["k"]) for r in extra} | set(cfg.levels))
    n_seeds = max(seed_counts(cfg)[1], 1 + max(int(r["seed"]) for r in extra))
    try:
        wider = sweep_jobs(cfg, workdir, prepared, levels=levels, directions=DIRECTIONS, n_seeds=n_seeds, here=False)
    except ConfigError:  # a sweep beyond MAX_JOBS, or a level that keeps nothing: the config's sweep only
        return []
    return [j for j in wider if j.key in records and j.key not in have]


def sweep_records(cfg: Config, workdir: Workdir, prepared: Prepared
                  ) -> tuple[list[Job], list[dict[str, Any]], list[dict[str, Any]], Skipped]:
    """(the config's jobs, their records, the records of other settings, the skipped lines: torn, damaged
    or not a retraining record) of the workdir's results log: a record belongs to the config when its job
    key is one of the config's jobs (base-model hashes, data, recipe, fill, ... all enter the key), so
    settings are never mixed. A job the config wants sparse (retrain.sparse_input) ran sparse or dense by
    where it ran, which is not resolved here (no torch): its sparse record counts, else its dense one; never
    both. With seeds: auto, the seeds added count too. A model-independent job's one record serves every
    model's job (fastroar.training.jobs.records_for)."""
    # DiffROAR needs both directions
    jobs = sweep_jobs(cfg, workdir, prepared, directions=DIRECTIONS, all_seeds=True, here=False)
    records, unreadable = read_results_checked(workdir.results_path, RETRAIN_FIELDS)
    jobs = jobs + recorded_beyond(cfg, workdir, prepared, records, jobs)
    found = [job if job.sparse_input and job.key in records else dataclasses.replace(job, sparse_input=False)
             for job in jobs]
    wanted = ({j.key for j in jobs} | {j.key for j in found}
              | {j.legacy_key for j in found if j.legacy_key is not None})
    mine = records_for(records, found)
    others = [r for key, r in records.items() if key not in wanted]
    return found, mine, others, unreadable
