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
from fastroar.stages.artifacts import (attribution_params, dataset_key, imputation, model_config, retrain_recipe,
                                       seed_counts)
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

EXPECTED = {
    'blockdigits': {"saved": "ec2e5a98d95978c8", "dataset": "blockdigits-62b92633e892", "models": "26a0cda2dbd6", "recipes": "73c5fd4a7fcc", "attribution_params": "f10c02271264", "seeds": [5, 5], "jobs": "69802e25f87b"},
    'blockdigits-top': {"saved": "27bad1a9927dd84b", "dataset": "blockdigits-top-80e6596c250c", "models": "a8bbe60b5801", "recipes": "73c5fd4a7fcc", "attribution_params": "f10c02271264", "seeds": [5, 5], "jobs": "69802e25f87b"},
    'blockmnist': {"saved": "beb44b8720640293", "dataset": "blockmnist-5c895ff3bd5e", "models": "c9b205bcdf9d", "recipes": "3a69efc29348", "attribution_params": "5bb387ea4d82", "seeds": [5, 5], "jobs": "2f55b595053d"},
    'blockmnist-cpu': {"saved": "9c73e695b5539f23", "dataset": "blockmnist-5c895ff3bd5e", "models": "e763e8d90ae4", "recipes": "a68f30740ed0", "attribution_params": "f10c02271264", "seeds": [3, 3], "jobs": "5e1180ebc454"},
    'blockmnist-top': {"saved": "9e75765490325a61", "dataset": "blockmnist-top-8ae28480f813", "models": "e6303df18ba7", "recipes": "3a69efc29348", "attribution_params": "5bb387ea4d82", "seeds": [5, 5], "jobs": "2f55b595053d"},
    'cifar10': {"saved": "3c0b9f1ae38082cb", "dataset": "cifar10-f99ee16ce4f2", "models": "86d02c2b6f6f", "recipes": "62e489fa4367", "attribution_params": "5bb387ea4d82", "seeds": [5, 5], "jobs": "f505301dfcc8"},
    'fashion-mnist': {"saved": "adea70cf2b82fda8", "dataset": "fashion-mnist-8ed1c5734cc7", "models": "44cbbe26de83", "recipes": "3a69efc29348", "attribution_params": "5bb387ea4d82", "seeds": [5, 5], "jobs": "06c4c79b3314"},
    'fashion-mnist-cpu': {"saved": "10f319932d79813f", "dataset": "fashion-mnist-8ed1c5734cc7", "models": "ea4b27846f41", "recipes": "ea879472fec5", "attribution_params": "f10c02271264", "seeds": [3, 3], "jobs": "b7f3648ecb61"},
    'folder': {"saved": "67ea92ee6159ad9c", "dataset": "folder-b8f29653f024", "models": "b46561eced72", "recipes": "ef789c5b84f9", "attribution_params": "5bb387ea4d82", "seeds": [5, 5], "jobs": "00c89a639748"},
    'imagenet10': {"saved": "b0389ff761267be4", "dataset": "imagenet10-3c3fcffa9a30", "models": "6b8a93e95512", "recipes": "ef789c5b84f9", "attribution_params": "5bb387ea4d82", "seeds": [5, 5], "jobs": "36daf033cb36"},
    'leakage': {"saved": "74d000a05203dc5c", "dataset": "leakage-adbbed650d93", "models": "3b9f31697a6b", "recipes": "95c23c4ad350", "attribution_params": "cd27fd178283", "seeds": [2, 2], "jobs": "f75a10b89f9a"},
    'leakage-all': {"saved": "261e2556198e3b6c", "dataset": "leakage-b739a73367de", "models": "e672201e4a59", "recipes": "95c23c4ad350", "attribution_params": "964b423a0eb0", "seeds": [2, 2], "jobs": "75a30a72b24f"},
    'mnist': {"saved": "a8b5c366db73f778", "dataset": "mnist-43a5f2def212", "models": "873f312eac13", "recipes": "3a69efc29348", "attribution_params": "5bb387ea4d82", "seeds": [5, 5], "jobs": "2f55b595053d"},
    'svhn': {"saved": "7c358ec0bc021c02", "dataset": "svhn-f9f2ae6f5154", "models": "f0b7f98e8278", "recipes": "aeb15f6c727e", "attribution_params": "5bb387ea4d82", "seeds": [5, 5], "jobs": "cb6b4ec510f8"},
    'blockdigits/0': {"saved": "e5adfbf1de517bff", "dataset": "blockdigits-62b92633e892", "models": "d11f80f05996", "recipes": "fd8a484ca6d2", "attribution_params": "f10c02271264", "seeds": [5, 5], "jobs": "28a9e19dc118"},
    'cifar10/0': {"saved": "376e0f9d0615b241", "dataset": "cifar10-f99ee16ce4f2", "models": "0c9171d4db28", "recipes": "23f03870cf37", "attribution_params": "5bb387ea4d82", "seeds": [5, 5], "jobs": "de6717047175"},
    'blockdigits/1': {"saved": "3f58bd25f29c7d4f", "dataset": "blockdigits-62b92633e892", "models": "00f457cbd4ea", "recipes": "73c5fd4a7fcc", "attribution_params": "f10c02271264", "seeds": [5, 5], "jobs": "3222d153c97a"},
    'cifar10/1': {"saved": "605615d6e44975df", "dataset": "cifar10-f99ee16ce4f2", "models": "501fe8ebbeb6", "recipes": "62e489fa4367", "attribution_params": "5bb387ea4d82", "seeds": [5, 5], "jobs": "9572b915cfc3"},
    'blockdigits/2': {"saved": "a6a7c9840e72c199", "dataset": "blockdigits-62b92633e892", "models": "26a0cda2dbd6", "recipes": "8eac20de0eb1", "attribution_params": "f10c02271264", "seeds": [5, 5], "jobs": "756fab667c51"},
    'cifar10/2': {"saved": "f900228475517256", "dataset": "cifar10-f99ee16ce4f2", "models": "86d02c2b6f6f", "recipes": "8eac20de0eb1", "attribution_params": "5bb387ea4d82", "seeds": [5, 5], "jobs": "2aae43cdc289"},
    'blockdigits/3': {"saved": "e84b44cf32325964", "dataset": "blockdigits-62b92633e892", "models": "26a0cda2dbd6", "recipes": "73c5fd4a7fcc", "attribution_params": "5748c64cebd9", "seeds": [3, 7], "jobs": "d17422f44241"},
    'cifar10/3': {"saved": "d4d4908789519aa0", "dataset": "cifar10-f99ee16ce4f2", "models": "86d02c2b6f6f", "recipes": "62e489fa4367", "attribution_params": "3c7b5d56eb90", "seeds": [3, 7], "jobs": "8a794327ec05"},
    'blockdigits/checkpoint': {"saved": "6a8ec8769b01b812", "dataset": "blockdigits-62b92633e892", "models": "6bb0d188c320", "recipes": "73c5fd4a7fcc", "attribution_params": "f10c02271264", "seeds": [5, 5], "jobs": "8b88b4288954"},
}


def fingerprint(cfg) -> dict:
    fill = cfg.retrain.fill
    hashes = {m.name: "h" + m.name for m in cfg.models}
    jobs = sweep(cfg, hashes, "dk", retrain_recipe(cfg, 1000).to_dict(), list(hashes), list(cfg.attributions),
                 cfg.levels, cfg.retrain.directions, range(seed_counts(cfg)[0]),
                 fill=float(np.float32(fill)) if not isinstance(fill, str) else 0.0, impute=imputation(cfg))
    return {
        "saved": hashlib.sha256(yaml.safe_dump(cfg.saved(), sort_keys=False).encode()).hexdigest()[:16],
        "dataset": dataset_key(cfg),
        "models": digest([model_config(cfg, m) for m in cfg.models if not m.checkpoint]),
        "recipes": digest([retrain_recipe(cfg, n).to_dict() for n in (None, 1000, 50000)]),
        "attribution_params": digest([attribution_params(cfg, a) for a in cfg.attributions]),
        "seeds": list(seed_counts(cfg)),
        "jobs": digest([j.key for j in jobs]),
    }


def test_every_shipped_config_is_covered():
    assert {name for name, _ in CALLS} == set(EXPECTED)


@pytest.mark.parametrize("name,call", CALLS, ids=[name for name, _ in CALLS])
def test_keys_and_saved_config_are_those_of_the_dict_based_config(name, call):
    assert fingerprint(resolve_config(**call)) == EXPECTED[name]


@pytest.mark.parametrize("name", ["blockdigits", "cifar10"])
def test_a_saved_config_loads_to_the_same_config(name, tmp_path):
    cfg = resolve_config(dataset=name, overrides=VARIANTS[1])
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg.saved(), sort_keys=False))
    again = resolve_config(tmp_path)
    assert again.saved() == cfg.saved() and fingerprint(again) == fingerprint(cfg)
