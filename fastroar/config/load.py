"""Run configuration: a YAML file per dataset under configs/, plus dotted overrides from the CLI.

The YAML is read as a dict, overridden (``--set``, ``--checkpoint``), then parsed once into the typed,
frozen ``schema.Config`` the stages read. ``validate`` adds what the schema's types cannot say (model
names unique, replicates expanded, levels as a set, scores named, a local store absolute); every value a
user can get wrong ends in a ConfigError that names the key and the fix. The workdir's config.yaml is the
Config's ``saved()`` form, so a run is reproducible from it.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Iterable

import yaml

from fastroar.config import schema
from fastroar.config.schema import BaseModelSpec, Config
from fastroar.errors import ConfigError
from fastroar.method import check_level

DEFAULT_DATASET = "blockdigits"
SCORES_NAME = re.compile(r"^[A-Za-z0-9_-]+$")


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
                overrides: Iterable[str] = (), checkpoints: dict[str, str] | None = None) -> Config:
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
    if overrides or checkpoints:  # the file's own mistakes name the file alone
        schema.check(cfg, source=str(p))
    for item in overrides:
        set_dotted(cfg, item)
    register_checkpoints(cfg, checkpoints or {})
    return validate(cfg, source=f"{p} with --set {' '.join(overrides)}" if overrides else str(p))


def register_checkpoints(cfg: dict[str, Any], checkpoints: dict[str, str]) -> None:
    """models := the user's checkpoints as base models: NAME's entry takes `checkpoint: PATH` (and is no
    longer trained), or a new entry {name: NAME, checkpoint: PATH} is appended."""
    if not checkpoints:
        return
    models = cfg["models"] if "models" in cfg else [m.saved() for m in Config.model_fields["models"].default]
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


def expand_replicates(models: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """models with each entry of `replicates: B` > 1 replaced by B entries: NAME (seed s), NAME.1 (seed s+1),
    ..., each with replicate_of: NAME (the family its rows are reported under). Idempotent: an expanded
    list has no replicates key left. Entries without replicates are returned unchanged (their keys too).
    The entries are those of a parsed config (validate), their types checked."""
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


def validate(cfg: dict[str, Any], source: str = "the config") -> Config:
    """`cfg` parsed (schema.check: keys, types, bounds, defaults) and completed with what needs more than
    one key: replicates expanded into base models with unique names, the scores' names added to the
    attributions, the levels as a sorted set, a local store made absolute. What needs the science
    registries (dataset, architecture, attribution names) is checked by fastroar.stages.checks."""
    parsed = schema.check(cfg, source)
    models = [BaseModelSpec.model_validate(m) for m in expand_replicates([m.saved() for m in parsed.models])]
    names = set()
    for m in models:
        if m.name in names:
            raise ConfigError(f"model name {m.name!r} appears twice in models")
        names.add(m.name)
        if m.checkpoint is not None and not m.checkpoint.strip():
            raise ConfigError(f"model {m.name!r}: checkpoint must be the path of a saved state dict or module")
    attributions = list(parsed.attributions)
    for name, path in parsed.scores.items():  # attributions imported from files: each NAME is one of the run's
        if not path.strip():
            raise ConfigError("scores must map attribution names to paths of precomputed scores, e.g. "
                              "scores: {mine: scores_dir}")
        if not SCORES_NAME.match(name):
            raise ConfigError(f"scores name {name!r} may hold only letters, digits, _ and -")
        if name not in attributions:
            attributions.append(name)
    update: dict[str, Any] = {"models": models, "attributions": attributions,
                              "levels": sorted({check_level(k) for k in parsed.levels})}
    if parsed.store is not None and not parsed.store.strip():
        raise ConfigError(f"store must be a path or an fsspec URL, got {parsed.store!r}")
    if parsed.store and "://" not in parsed.store:
        # a local path is kept absolute, so the saved config finds it from any working directory
        update["store"] = str(Path(os.path.expandvars(parsed.store)).expanduser().resolve())  # $HOME, ~
    return parsed.model_copy(update=update)
