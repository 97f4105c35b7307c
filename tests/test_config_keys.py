"""Parsing a config into the typed Config changes no content key and no saved config by one byte.

EXPECTED was computed once by the dict-based config code (commit 70e4317, before the typed Config) for every
shipped config and a few --set / --checkpoint variants that reach the normalisations (replicates, level
order, scores, store, integer values of float keys, derived recipes): the saved config.yaml's hash, the
dataset key, the base models' configs, the retrain recipes, the attribution parameters, the seed counts
and the job keys of the sweep.
"""
from __future__ import annotations

import hashlib

import numpy as np
import pytest
import yaml

from fastroar.config import available_configs
from fastroar.keys import digest
from fastroar.stages.artifacts import (
    attribution_params,
    dataset_key,
    imputation,
    model_config,
    retrain_recipe,
    seed_counts,
)
from fastroar.stages.contract import resolve_config
from fastroar.training.jobs import sweep

VARIANTS = [
    ["train.lr=1", "retrain.recipe=fast", "retrain.fill=road", "train.warmup_epochs=1"],
    ["models=[{name: a, replicates: 3, seed: 2}, {adversary: {norm: linf, eps: 1, steps: 3}, name: b}]",
     "levels=[0.5, 0.1, 0.1, 0.25]", "retrain.stack_conv=true", "train.min_test_acc=0.5"],
    ["retrain.recipe=airbench", "retrain.fast_epochs=3", "retrain.lr=0.2", "retrain.epochs=4", "loader=resident"],
    ["retrain.fill=0.5", "retrain.seeds=auto", "retrain.max_seeds=7", "attribution_params={random: {seed: 3}}",
     "scores={mine: /tmp/somewhere}", "store=/tmp/a/../store", "retrain.sparse_input=false"],
]
CALLS = ([(name, dict(dataset=name)) for name in available_configs()]
         + [(f"{name}/{i}", dict(dataset=name, overrides=sets)) for i, sets in enumerate(VARIANTS)
            for name in ("blockdigits", "cifar10")]
         + [("blockdigits/checkpoint", dict(dataset="blockdigits",
                                            checkpoints={"mine": "/tmp/x.pt", "robust": "/tmp/r.pt"}))])

FIELDS = ("saved", "dataset", "models", "recipes", "attribution_params", "seeds", "jobs")
EXPECTED = {  # name: the FIELDS of fingerprint()
    "blockdigits": ("ec2e5a98d95978c8", "blockdigits-62b92633e892", "26a0cda2dbd6",
        "73c5fd4a7fcc", "f10c02271264", (5, 5), "69802e25f87b"),
    "blockdigits-top": ("27bad1a9927dd84b", "blockdigits-top-80e6596c250c", "a8bbe60b5801",
        "73c5fd4a7fcc", "f10c02271264", (5, 5), "69802e25f87b"),
    "blockmnist": ("beb44b8720640293", "blockmnist-5c895ff3bd5e", "c9b205bcdf9d",
        "3a69efc29348", "5bb387ea4d82", (5, 5), "2f55b595053d"),
    # blockmnist-cpu's model gained bn_eps, then its recipe cpu_channels_last, after 70e4317: its saved
    # config, models, recipes and jobs changed with them
    "blockmnist-cpu": ("8b3c174693777943", "blockmnist-5c895ff3bd5e", "6e2aa493255c",
        "1c8d30c82e1c", "f10c02271264", (3, 3), "2e06b1e829a5"),
    "blockmnist-top": ("9e75765490325a61", "blockmnist-top-8ae28480f813", "e6303df18ba7",
        "3a69efc29348", "5bb387ea4d82", (5, 5), "2f55b595053d"),
    "cifar10": ("3c0b9f1ae38082cb", "cifar10-f99ee16ce4f2", "86d02c2b6f6f",
        "62e489fa4367", "5bb387ea4d82", (5, 5), "f505301dfcc8"),
    "fashion-mnist": ("adea70cf2b82fda8", "fashion-mnist-8ed1c5734cc7", "44cbbe26de83",
        "3a69efc29348", "5bb387ea4d82", (5, 5), "06c4c79b3314"),
    "fashion-mnist-cpu": ("10f319932d79813f", "fashion-mnist-8ed1c5734cc7", "ea4b27846f41",
        "ea879472fec5", "f10c02271264", (3, 3), "b7f3648ecb61"),
    "folder": ("67ea92ee6159ad9c", "folder-b8f29653f024", "b46561eced72",
        "ef789c5b84f9", "5bb387ea4d82", (5, 5), "00c89a639748"),
    "imagenet10": ("b0389ff761267be4", "imagenet10-3c3fcffa9a30", "6b8a93e95512",
        "ef789c5b84f9", "5bb387ea4d82", (5, 5), "36daf033cb36"),
    "leakage": ("74d000a05203dc5c", "leakage-adbbed650d93", "3b9f31697a6b",
        "95c23c4ad350", "cd27fd178283", (2, 2), "f75a10b89f9a"),
    "leakage-all": ("261e2556198e3b6c", "leakage-b739a73367de", "e672201e4a59",
        "95c23c4ad350", "964b423a0eb0", (2, 2), "75a30a72b24f"),
    # added with the step schedule: computed by the dict-based code of that branch (e23bc25)
    "leakage-reference": ("584cb766882dd3f3", "leakage-008da9697df5", "def3ccc5d0ad",
        "dab2d38649aa", "964b423a0eb0", (2, 2), "412a2ab977b9"),
    "mnist": ("a8b5c366db73f778", "mnist-43a5f2def212", "873f312eac13",
        "3a69efc29348", "5bb387ea4d82", (5, 5), "2f55b595053d"),
    "svhn": ("7c358ec0bc021c02", "svhn-f9f2ae6f5154", "f0b7f98e8278",
        "aeb15f6c727e", "5bb387ea4d82", (5, 5), "cb6b4ec510f8"),
    "blockdigits/0": ("e5adfbf1de517bff", "blockdigits-62b92633e892", "d11f80f05996",
        "fd8a484ca6d2", "f10c02271264", (5, 5), "28a9e19dc118"),
    "cifar10/0": ("376e0f9d0615b241", "cifar10-f99ee16ce4f2", "0c9171d4db28",
        "23f03870cf37", "5bb387ea4d82", (5, 5), "de6717047175"),
    "blockdigits/1": ("3f58bd25f29c7d4f", "blockdigits-62b92633e892", "00f457cbd4ea",
        "73c5fd4a7fcc", "f10c02271264", (5, 5), "3222d153c97a"),
    "cifar10/1": ("605615d6e44975df", "cifar10-f99ee16ce4f2", "501fe8ebbeb6",
        "62e489fa4367", "5bb387ea4d82", (5, 5), "9572b915cfc3"),
    "blockdigits/2": ("a6a7c9840e72c199", "blockdigits-62b92633e892", "26a0cda2dbd6",
        "8eac20de0eb1", "f10c02271264", (5, 5), "756fab667c51"),
    "cifar10/2": ("f900228475517256", "cifar10-f99ee16ce4f2", "86d02c2b6f6f",
        "8eac20de0eb1", "5bb387ea4d82", (5, 5), "2aae43cdc289"),
    "blockdigits/3": ("e84b44cf32325964", "blockdigits-62b92633e892", "26a0cda2dbd6",
        "73c5fd4a7fcc", "5748c64cebd9", (3, 7), "d17422f44241"),
    "cifar10/3": ("d4d4908789519aa0", "cifar10-f99ee16ce4f2", "86d02c2b6f6f",
        "62e489fa4367", "3c7b5d56eb90", (3, 7), "8a794327ec05"),
    "blockdigits/checkpoint": ("6a8ec8769b01b812", "blockdigits-62b92633e892", "6bb0d188c320",
        "73c5fd4a7fcc", "f10c02271264", (5, 5), "8b88b4288954"),
}


def fingerprint(cfg) -> dict:
    fill = cfg.retrain.fill
    impute = imputation(fill)
    hashes = {m.name: "h" + m.name for m in cfg.models}
    jobs = sweep(cfg, hashes, "dk", retrain_recipe(cfg, 1000).to_dict(), list(hashes), list(cfg.attributions),
                 cfg.levels, cfg.retrain.directions, range(seed_counts(cfg)[0]),
                 fill=float(np.float32(fill)) if not isinstance(fill, str) else 0.0, impute=impute)
    return {
        "saved": hashlib.sha256(yaml.safe_dump(cfg.saved(), sort_keys=False).encode()).hexdigest()[:16],
        "dataset": dataset_key(cfg),
        "models": digest([model_config(cfg, m) for m in cfg.models if not m.checkpoint]),
        "recipes": digest([retrain_recipe(cfg, n).to_dict() for n in (None, 1000, 50000)]),
        "attribution_params": digest([attribution_params(cfg, a) for a in cfg.attributions]),
        "seeds": seed_counts(cfg),
        "jobs": digest([j.key for j in jobs]),
    }


def test_every_shipped_config_is_covered():
    assert {name for name, _ in CALLS} == set(EXPECTED)


@pytest.mark.parametrize("name,call", CALLS, ids=[name for name, _ in CALLS])
def test_keys_and_saved_config_are_those_of_the_dict_based_config(name, call):
    assert fingerprint(resolve_config(**call)) == dict(zip(FIELDS, EXPECTED[name]))


@pytest.mark.parametrize("name", ["blockdigits", "cifar10"])
def test_a_saved_config_loads_to_the_same_config(name, tmp_path):
    cfg = resolve_config(dataset=name, overrides=VARIANTS[1])
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg.saved(), sort_keys=False))
    again = resolve_config(tmp_path)
    assert again.saved() == cfg.saved() and fingerprint(again) == fingerprint(cfg)
