"""Run configuration: a YAML file per dataset under configs/, plus dotted overrides from the CLI.

A config is a plain dict (it is written whole into the workdir and into every record, so a run is
reproducible from it). ``validate`` turns every value a user can get wrong into a ConfigError that
names the key and the fix.
"""
from __future__ import annotations

import copy
import os
import re
from pathlib import Path
from typing import Any, Iterable

import yaml

from fastroar.config import schema
from fastroar.errors import ConfigError
from fastroar.method import DIRECTIONS, RECIPES, check_level

DEFAULT_DATASET = "blockdigits"
SCORES_NAME = re.compile(r"^[A-Za-z0-9_-]+$")
LOADERS = ("auto", "ffcv", "resident")


class DuplicateKeyError(yaml.YAMLError):
    """A mapping names one key twice (YAML keeps the last silently: a first `retrain:` block would be lost)."""

    def __init__(self, key: Any, first: int, second: int) -> None:
        super().__init__(f"key {key!r} appears twice (lines {first} and {second}); YAML would keep only the last "
                         "silently: merge the two into one")


class UniqueKeyLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a mapping naming a key twice (merge keys `<<` excepted)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            try:
                if key in seen:
                    raise DuplicateKeyError(key, seen[key], line)
                seen[key] = line
            except TypeError:  # an unhashable key: SafeLoader's own error names it
                continue
        return super().construct_mapping(node, deep=deep)


def parse_yaml(text: str) -> Any:
    """The YAML `text` as Python values (yaml.safe_load's), refusing duplicate keys (DuplicateKeyError)."""
    return yaml.load(text, Loader=UniqueKeyLoader)


def config_dir() -> Path:
    """Where the shipped YAML configs are (the repository's configs/, or the installed copy)."""
    repo = Path(__file__).resolve().parents[2] / "configs"
    # An installed package's parent is site-packages: only a configs/ with fastroar's default is ours.
    return repo if (repo / f"{DEFAULT_DATASET}.yaml").is_file() else Path(__file__).resolve().parents[1] / "configs"


def available_configs() -> list[str]:
    return sorted(p.stem for p in config_dir().glob("*.yaml"))


def load_config(dataset: str | None = None, path: str | Path | None = None,
                overrides: Iterable[str] = (), checkpoints: dict[str, str] | None = None) -> dict[str, Any]:
    """The config from `path`, else configs/<dataset>.yaml, with `key.sub=value` overrides applied, then
    `checkpoints` {NAME: PATH} registered as base models (see register_checkpoints)."""
    if path is not None:
        p = Path(path)
        if p.is_dir():
            raise ConfigError(f"--config {p} is a directory; pass a YAML file (e.g. configs/blockdigits.yaml)")
        if not p.is_file():
            raise ConfigError(f"config file {p} does not exist")
    else:
        name = dataset or DEFAULT_DATASET
        p = config_dir() / f"{name}.yaml"
        if not p.is_file():
            raise ConfigError(f"unknown dataset {name!r}; choose one of: {', '.join(available_configs())} "
                              "(or pass --config FILE)")
    try:
        cfg = parse_yaml(p.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{p} is not a text file; --config takes a YAML file") from None
    except DuplicateKeyError as e:
        raise ConfigError(f"{p}: {e}") from None
    except yaml.YAMLError as e:
        first = " ".join(str(e).split())
        raise ConfigError(f"{p} is not valid YAML: {first}") from None
    schema.check(cfg, source=str(p))
    for item in overrides:
        set_dotted(cfg, item)
    register_checkpoints(cfg, checkpoints or {})
    schema.check(cfg, source=f"{p} with --set {' '.join(overrides)}" if overrides else str(p))
    return validate(cfg)


def register_checkpoints(cfg: dict[str, Any], checkpoints: dict[str, str]) -> None:
    """models := the user's checkpoints as base models: NAME's entry takes `checkpoint: PATH` (and is no
    longer trained), or a new entry {name: NAME, checkpoint: PATH} is appended."""
    if not checkpoints:
        return
    models = cfg.get("models", [{"name": "standard"}])
    if not isinstance(models, list):
        raise ConfigError("models must be a list of {name: ...} entries")
    models = [dict(m) if isinstance(m, dict) else m for m in models]
    for name, path in checkpoints.items():
        same = [m for m in models if isinstance(m, dict) and m.get("name") == name]
        if same:
            same[0].pop("adversary", None)
            same[0]["checkpoint"] = str(path)
        else:
            models.append({"name": name, "checkpoint": str(path)})
    cfg["models"] = models


def set_dotted(cfg: dict[str, Any], item: str) -> None:
    """Applies one `a.b.c=value` override (value parsed as YAML: numbers, lists, booleans)."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like key.sub=value")
    key, raw = item.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise ConfigError(f"override {item!r} names no key; write it as key.sub=value, e.g. train.epochs=5")
    node = cfg
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {item!r}: {part!r} is not a section")
    try:
        node[parts[-1]] = parse_yaml(raw)
    except DuplicateKeyError as e:
        raise ConfigError(f"override {item!r}: {e}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"override {item!r}: value is not valid YAML ({' '.join(str(e).split())})") from None


DEFAULT_SEEDS = 5   # retrain.seeds: the paper averages five runs


def expand_replicates(models: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """models with each entry of `replicates: B` > 1 replaced by B entries: NAME (seed s), NAME.1 (seed s+1),
    ..., each with replicate_of: NAME (the family its rows are reported under). Idempotent: an expanded
    list has no replicates key left. Entries without replicates are returned unchanged (their keys too).
    The schema has checked the entries' types (schema.check runs before validate)."""
    out = []
    for m in models:
        if m.get("replicates", 1) == 1:
            out.append(m)
            continue
        if m.get("checkpoint"):
            raise ConfigError(f"model {m['name']!r}: replicates trains several base models; a registered "
                              "checkpoint is one model (drop replicates, or register each checkpoint by name)")
        base = {k: v for k, v in m.items() if k != "replicates"}
        seed = base.get("seed", 0)
        out += [base | {"name": base["name"] if i == 0 else f"{base['name']}.{i}", "seed": seed + i,
                        "replicate_of": base["name"]} for i in range(m["replicates"])]
    return out


def validate(cfg: dict[str, Any]) -> dict[str, Any]:
    """Checks and normalises a config's structure and values (returns a new dict). What needs the
    science registries (dataset, architecture, attribution names; recipes; adversaries) is checked by
    fastroar.stages.checks."""
    cfg = copy.deepcopy(cfg)
    ds = cfg.setdefault("dataset", {})
    ds.setdefault("params", {})
    model = cfg.setdefault("model", {})
    model.setdefault("params", {})
    train = cfg.setdefault("train", {})
    floor = train.get("min_test_acc")
    if floor is not None and (isinstance(floor, bool) or not isinstance(floor, (int, float)) or not 0 <= floor <= 1):
        raise ConfigError(f"train.min_test_acc must be a number in [0, 1], got {floor!r}")
    names = set()
    cfg["models"] = expand_replicates(cfg.setdefault("models", [{"name": "standard"}]))
    for m in cfg["models"]:
        if not isinstance(m, dict) or not m.get("name"):
            raise ConfigError(f"each entry of models needs a name, got {m!r}")
        if m["name"] in names:
            raise ConfigError(f"model name {m['name']!r} appears twice in models")
        names.add(m["name"])
        if "checkpoint" in m and not (isinstance(m["checkpoint"], str) and m["checkpoint"].strip()):
            raise ConfigError(f"model {m['name']!r}: checkpoint must be the path of a saved state dict or module")
    cfg.setdefault("attributions", ["gradient"])
    scores = cfg.get("scores")
    if scores is not None:  # attributions imported from files: each NAME is an attribution of the run
        if not isinstance(scores, dict) or not all(isinstance(v, str) and v.strip() for v in scores.values()):
            raise ConfigError("scores must map attribution names to paths of precomputed scores, e.g. "
                              "scores: {mine: scores_dir}")
        for name in scores:
            if not SCORES_NAME.match(str(name)):
                raise ConfigError(f"scores name {name!r} may hold only letters, digits, _ and -")
            if name not in cfg["attributions"]:
                cfg["attributions"] = [*cfg["attributions"], name]
    if not isinstance(cfg.setdefault("attribution_params", {}), dict):
        raise ConfigError("attribution_params must map attribution names to keyword arguments")
    levels = cfg.setdefault("levels", [0.1, 0.2, 0.3, 0.5])
    if not isinstance(levels, list) or not levels:
        raise ConfigError("levels must be a non-empty list of k values in (0, 1)")
    cfg["levels"] = sorted({check_level(k) for k in levels})
    rt = cfg.setdefault("retrain", {})
    dirs = rt.setdefault("directions", list(DIRECTIONS))
    for d in dirs:
        if d not in DIRECTIONS:
            raise ConfigError(f"direction must be one of top, bottom (or both), got {d!r}")
    seeds = rt.setdefault("seeds", DEFAULT_SEEDS)
    if seeds != "auto" and (not isinstance(seeds, int) or isinstance(seeds, bool) or seeds < 1):
        raise ConfigError(f"seeds (the number of runs per level and direction) must be an integer >= 1 or auto, "
                          f"got {seeds!r}")
    if rt.setdefault("recipe", "paper") not in RECIPES:
        raise ConfigError(f"retrain.recipe must be paper or fast, got {rt['recipe']!r}")
    for key, default in (("batch_models", 16), ("fast_epochs", None)):
        value = rt.setdefault(key, default)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise ConfigError(f"retrain.{key} must be an integer >= 1, got {value!r}")
    rt.setdefault("stack_conv", "auto")   # its values (auto, true, false) are checked by the schema
    cfg.setdefault("precompute", {}).setdefault("batch_size", 256)
    if cfg.setdefault("loader", "auto") not in LOADERS:
        raise ConfigError(f"loader must be one of {LOADERS}, got {cfg['loader']!r}")
    fill = rt.setdefault("fill", "zero")
    if fill not in ("zero", "mean", "road") and (isinstance(fill, bool) or not isinstance(fill, (int, float))):
        raise ConfigError(f"retrain.fill must be zero, mean, road or a number, got {fill!r}")
    if cfg.get("store") is not None and not (isinstance(cfg["store"], str) and cfg["store"].strip()):
        raise ConfigError(f"store must be a path or an fsspec URL, got {cfg['store']!r}")
    if cfg.get("store") and "://" not in cfg["store"]:
        # a local path is kept absolute, so the saved config finds it from any working directory
        cfg["store"] = str(Path(os.path.expandvars(cfg["store"])).expanduser().resolve())  # $HOME, ~
    if cfg.setdefault("device", "auto") not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"device must be auto, cpu or cuda, got {cfg['device']!r}")
    return cfg
