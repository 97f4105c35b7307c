"""Every dataset of the paper (and a user's folder) through prepare -> train -> precompute -> retrain ->
report on fixtures in its native on-disk format (no downloads), with the prepared pixels and labels
checked against independent references; and the bad-data errors a user can cause."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from fastroar.cli import cli
from tests.fixtures import idx_content_md5s, write_cifar10, write_class_tree, write_mnist, write_svhn

# The paper's ImageNet-10 (robustness mixed_10, balanced): superclass wnid and the ImageNet-1k class
# indices kept, in label order; written out here independently of the shipped JSON.
IMAGENET10 = [
    ("dog", "n02084071", range(151, 157)), ("bird", "n01503061", range(7, 13)),
    ("insect", "n02159955", range(300, 306)), ("monkey", "n02484322", range(370, 376)),
    ("car", "n02958343", [407, 436, 468, 511, 609, 627]), ("feline", "n02120997", range(286, 292)),
    ("truck", "n04490091", [555, 569, 675, 717, 734, 864]), ("fruit", "n13134947", [948, 984, 987, 988, 989, 990]),
    ("fungus", "n12992868", range(991, 997)), ("boat", "n02858304", [472, 554, 576, 625, 814, 914]),
]
# A few ImageNet-1k index -> wnid facts (ILSVRC-2012 sorted wnids) to check the shipped member wnids.
KNOWN_WNIDS = {7: "n01514668", 151: "n02085620", 286: "n02125311", 291: "n02129165", 407: "n02701002",
               472: "n02951358", 914: "n04612504", 948: "n07742313", 996: "n13052670"}

# Tiny but complete runs: one small MLP, one epoch, one level, both directions, one seed.
TINY = ["model.arch=mlp2", "model.params={width: 16}", "train.epochs=1", "train.batch_size=32", "retrain.epochs=1",
        "retrain.seeds=1", "levels=[0.5]", "models=[{name: standard}]", "attributions=[gradient]"]


def sets(*items: str) -> list[str]:
    return [a for item in items for a in ("--set", item)]


def invoke(*args: str):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def run_stages(wd: Path, dataset: str, root: Path, *extra: str, overrides=TINY) -> dict[str, str]:
    """prepare (with the dataset options) then train, precompute, retrain, report from the saved config."""
    outputs = {}
    for stage in ("prepare", "train", "precompute", "retrain", "report"):
        args = [stage, "--workdir", wd, "--no-progress"]
        if stage == "prepare":
            args += ["--dataset", dataset, "--data-root", root, *extra, *sets(*overrides)]
        result = invoke(*args)
        assert result.exit_code == 0, f"{stage}: {result.output}"
        outputs[stage] = result.output
    return outputs


def prepared_split(wd: Path, split: str) -> tuple[np.ndarray, np.ndarray, Path]:
    from fastroar.engine.beton import read_beton

    (data,) = (wd / "data").iterdir()
    images, labels = read_beton(str(data / f"{split}.beton"))
    return images, labels, data


def check_records(wd: Path, n_models: int = 1) -> list[dict]:
    records = [json.loads(line) for line in (wd / "results" / "results.jsonl").read_text().splitlines()]
    assert sorted(r["direction"] for r in records) == sorted(["bottom", "top"] * n_models)
    assert all(r["k"] == 0.5 and 0.0 <= r["accuracy"] <= 1.0 for r in records)
    rows = (wd / "report" / "diffroar.csv").read_text().splitlines()
    assert len(rows) == 1 + n_models
    return records


def reference_image(path: Path, size: int, resize: int) -> np.ndarray:
    """The documented transform, computed with PIL alone: RGB, shorter side -> resize (bilinear, longer side
    truncated as torchvision's Resize does), center crop size x size (offsets rounded half to even)."""
    from PIL import Image

    with Image.open(path) as img:
        img = img.convert("RGB")
        w, h = img.size
        nw, nh = (resize, int(resize * h / w)) if w <= h else (int(resize * w / h), resize)
        img = img.resize((nw, nh), Image.BILINEAR)
        top, left = int(round((nh - size) / 2.0)), int(round((nw - size) / 2.0))
        return np.asarray(img.crop((left, top, left + size, top + size))).transpose(2, 0, 1)


def test_shipped_imagenet10_mapping_is_the_balanced_mixed_10():
    from fastroar.datasets.folder import imagenet10_mapping

    mapping = imagenet10_mapping()
    assert [(s["label"], s["name"], s["wnid"]) for s in mapping] == \
        [(i, n, w) for i, (n, w, _) in enumerate(IMAGENET10)]
    for s, (_, _, indices) in zip(mapping, IMAGENET10):
        assert [m["imagenet_index"] for m in s["members"]] == list(indices)
    members = {m["imagenet_index"]: m["wnid"] for s in mapping for m in s["members"]}
    assert len(set(members.values())) == 60
    assert all(members[i] == w for i, w in KNOWN_WNIDS.items())
    # class index = position in the sorted wnid list: index order and wnid order agree
    assert [members[i] for i in sorted(members)] == sorted(members.values())


@pytest.fixture(scope="module")
def imagenet_tree(tmp_path_factory):
    from fastroar.datasets.folder import imagenet10_mapping

    root = tmp_path_factory.mktemp("imagenet")
    wnids = [m["wnid"] for s in imagenet10_mapping() for m in s["members"]]
    files = write_class_tree(root, wnids, {"train": 1, "val": 1}, seed=1)
    (root / "train" / "n99999999").mkdir()  # other ImageNet classes are ignored
    return root, files


def test_imagenet10_through_every_stage(imagenet_tree, tmp_path, monkeypatch):
    """Prepared pixels are the fixture images after resize 27 + center crop 24 (image_size 24), labels the
    superclass of each wnid folder; then every stage runs on the large-data paths: FFCV streaming loaders,
    and splits memory-mapped rather than read whole (as ImageNet-scale data)."""
    import fastroar.stages.artifacts

    monkeypatch.setattr(fastroar.stages.artifacts, "IN_MEMORY_BYTES", 0)
    root, files = imagenet_tree
    wd = tmp_path / "wd"
    out = run_stages(wd, "imagenet10", root, "--image-size", "24",
                     overrides=TINY + ["loader=ffcv"])
    assert "train 60, test 60 images of shape (3, 24, 24)" in out["prepare"]
    label_of = {}
    for s in json.loads((Path(__file__).parent.parent / "fastroar/datasets/data/imagenet10.json").read_text())[
            "superclasses"]:
        label_of.update({m["wnid"]: s["label"] for m in s["members"]})
    for split, folder in (("train", "train"), ("test", "val")):
        images, labels, _ = prepared_split(wd, split)
        paths = sorted(files[folder], key=lambda p: (label_of[p.parent.name], p.parent.name, p.name))
        # wnids within a superclass come in class-index order, which is wnid order
        expected = np.stack([reference_image(p, 24, 27) for p in paths])
        np.testing.assert_array_equal(images, expected)
        assert labels.tolist() == [label_of[p.parent.name] for p in paths]
        assert labels.tolist() == sorted(labels.tolist()) and set(labels.tolist()) == set(range(10))
    cfg = yaml.safe_load((wd / "config.yaml").read_text())
    assert cfg["dataset"]["params"]["image_size"] == 24 and cfg["loader"] == "ffcv"
    assert {r["loader"] for r in check_records(wd)} == {"ffcv"}
    assert "(ffcv loader)" in out["train"]


def test_memory_mapped_split_equals_the_full_read(imagenet_tree, tmp_path, monkeypatch):
    """Prepared.arrays of a split over IN_MEMORY_BYTES: a MappedImages view reading the same pixels and
    labels as read_beton, by int, slice and index array, pickled too."""
    import pickle

    import fastroar.stages.artifacts
    from fastroar.config import load_config
    from fastroar.engine.beton import MappedImages, read_beton
    from fastroar.engine.workspace import Workdir
    from fastroar.stages.contract import Context
    from fastroar.stages.prepare import prepare

    root, _ = imagenet_tree
    cfg = load_config("imagenet10", overrides=[f"dataset.params.root={root}", "dataset.params.image_size=16"])
    prepared, _ = prepare(Context(cfg, Workdir(tmp_path / "wd", create=True), progress=False))
    full, full_labels = read_beton(str(prepared.beton("train")))
    monkeypatch.setattr(fastroar.stages.artifacts, "IN_MEMORY_BYTES", full.nbytes - 1)
    images, labels = prepared.arrays("train")
    assert isinstance(images, MappedImages) and images.shape == full.shape and images.dtype == np.uint8
    np.testing.assert_array_equal(labels, full_labels)
    np.testing.assert_array_equal(images[7], full[7])
    np.testing.assert_array_equal(images[5:23], full[5:23])
    np.testing.assert_array_equal(images[[59, 0, 31]], full[[59, 0, 31]])
    np.testing.assert_array_equal(np.asarray(pickle.loads(pickle.dumps(images))), full)
    monkeypatch.setattr(fastroar.stages.artifacts, "IN_MEMORY_BYTES", full.nbytes)
    assert isinstance(prepared.arrays("train")[0], np.ndarray)


def test_user_folder_through_every_stage(tmp_path):
    """A user's folder (classes = sorted train/ subfolders, test/ as the test split) with the config's resnet18."""
    root = tmp_path / "photos"
    files = write_class_tree(root, ["zebra", "apple", "moth"], {"train": 4, "test": 2}, seed=2)
    wd = tmp_path / "wd"
    out = run_stages(wd, "folder", root, "--image-size", "16",
                     overrides=[o for o in TINY if not o.startswith("model.")] + ["model.params={}"])
    assert yaml.safe_load((wd / "config.yaml").read_text())["model"] == {"arch": "resnet18", "params": {}}
    assert "train 12, test 6 images of shape (3, 16, 16)" in out["prepare"]
    classes = ["apple", "moth", "zebra"]  # sorted folder names
    for split, folder in (("train", "train"), ("test", "test")):
        images, labels, _ = prepared_split(wd, split)
        paths = sorted(files[folder], key=lambda p: (classes.index(p.parent.name), p.name))
        np.testing.assert_array_equal(images, np.stack([reference_image(p, 16, 18) for p in paths]))
        assert labels.tolist() == [classes.index(p.parent.name) for p in paths]
    check_records(wd)


def test_folder_prepares_at_224(tmp_path):
    """--image-size 224: resize 256 + center crop 224 (images smaller than that are upscaled)."""
    from fastroar.config import load_config
    from fastroar.engine.workspace import Workdir
    from fastroar.stages.contract import Context
    from fastroar.stages.prepare import prepare

    root = tmp_path / "photos"
    files = write_class_tree(root, ["a", "b"], {"train": 1, "val": 1}, seed=3, sizes=[(300, 260), (90, 120)])
    cfg = load_config("folder", overrides=[f"dataset.params.root={root}", "dataset.params.image_size=224"])
    prepared, did = prepare(Context(cfg, Workdir(tmp_path / "wd", create=True), progress=False))
    assert did and prepared.shape == (3, 224, 224)
    images, labels, _ = prepared_split(tmp_path / "wd", "train")
    np.testing.assert_array_equal(images, np.stack([reference_image(p, 224, 256) for p in sorted(files["train"])]))
    assert labels.tolist() == [0, 1]


# Fixtures are faithful copies, not the official files: their MD5s differ, so the checksum check is off.
ACCEPT_COPIES = ("--set", "dataset.params.verify_checksums=false")


def test_cifar10_through_every_stage(tmp_path):
    data = write_cifar10(tmp_path / "c", n_per_batch=12)
    wd = tmp_path / "wd"
    run_stages(wd, "cifar10", tmp_path / "c", *ACCEPT_COPIES,
               overrides=TINY[:-2] + ["models=[{name: standard}, {name: linf-8, adversary: {norm: linf, eps: "
                                      "0.0313725, steps: 1}}]", "attributions=[gradient]"])
    for split in ("train", "test"):
        images, labels, _ = prepared_split(wd, split)
        raw = np.concatenate([d for d, _ in data[split]]).reshape(-1, 3, 32, 32)  # CIFAR rows: R, G, B planes
        np.testing.assert_array_equal(images, raw)
        assert labels.tolist() == [y for _, ys in data[split] for y in ys]
    check_records(wd, n_models=2)


def test_svhn_through_every_stage(tmp_path):
    data = write_svhn(tmp_path / "s", n_train=40, n_test=20)
    wd = tmp_path / "wd"
    run_stages(wd, "svhn", tmp_path / "s", *ACCEPT_COPIES)
    for split in ("train", "test"):
        images, labels, _ = prepared_split(wd, split)
        X, y = data[split]
        np.testing.assert_array_equal(images, X.transpose(3, 2, 0, 1))  # .mat X is (H, W, C, N)
        assert labels.tolist() == [0 if v == 10 else int(v) for v in y[:, 0]]  # SVHN's digit 0 is label 10
    check_records(wd)


@pytest.mark.parametrize("name,folder", [("mnist", "MNIST"), ("fashion-mnist", "FashionMNIST")])
def test_mnist_like_through_every_stage(tmp_path, monkeypatch, name, folder):
    from fastroar.datasets import native

    data = write_mnist(tmp_path / "m", folder, n_train=40, n_test=20)
    monkeypatch.setitem(native.IDX_MD5, name, idx_content_md5s(tmp_path / "m" / folder / "raw"))  # the "official" files
    wd = tmp_path / "wd"
    run_stages(wd, name, tmp_path / "m")
    for split, prefix in (("train", "train"), ("test", "t10k")):
        images, labels, _ = prepared_split(wd, split)
        np.testing.assert_array_equal(images[:, 0], data[prefix][0])
        assert labels.tolist() == data[prefix][1].tolist()
    check_records(wd)


@pytest.mark.parametrize("name", ["blockmnist", "blockmnist-top"])
def test_blockmnist_through_every_stage(tmp_path, monkeypatch, name):
    from fastroar.datasets import native

    data = write_mnist(tmp_path / "m", "MNIST", n_train=40, n_test=20)
    monkeypatch.setitem(native.IDX_MD5, "mnist", idx_content_md5s(tmp_path / "m" / "MNIST" / "raw"))
    wd = tmp_path / "wd"
    out = run_stages(wd, name, tmp_path / "m")
    tops = []
    for split, prefix in (("train", "train"), ("test", "t10k")):
        images, labels, ddir = prepared_split(wd, split)
        signal = np.load(ddir / f"signal_{split}.npy").reshape(-1, 56, 28)
        top = signal[:, :28].all(axis=(1, 2))
        assert (signal.sum(axis=(1, 2)) == 28 * 28).all() and (top | signal[:, 28:].all(axis=(1, 2))).all()
        digit = np.where(top[:, None, None], images[:, 0, :28], images[:, 0, 28:])
        np.testing.assert_array_equal(digit, data[prefix][0])  # the signal block holds the MNIST digit
        assert labels.tolist() == data[prefix][1].tolist()
        tops += top.tolist()
    assert all(tops) if name == "blockmnist-top" else 0 < sum(tops) < len(tops)
    check_records(wd)
    assert "Signal-block localization" in out["report"]
    loc = (wd / "report" / "localization.csv").read_text().splitlines()
    assert len(loc) == 2  # header + (standard, gradient, k=0.5)


# ---- bad data: one clear line naming the file, class or path; exit 2; nothing half-written ----

def prepare_fails(tmp_path: Path, *args: str) -> str:
    wd = tmp_path / "wd"
    result = invoke("prepare", "--workdir", wd, "--no-progress", *args)
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.output
    data = wd / "data"
    assert not data.exists() or not [p for p in data.rglob("*") if p.is_file()]  # no .beton, .tmp, meta.json
    return lines[0]


def test_missing_root(tmp_path):
    msg = prepare_fails(tmp_path, "-d", "imagenet10", "--data-root", tmp_path / "nowhere")
    assert "nowhere does not exist" in msg and "train/" in msg
    assert "--data-root" in prepare_fails(tmp_path, "-d", "folder")


def test_options_a_dataset_does_not_take(tmp_path):
    msg = prepare_fails(tmp_path, "-d", "cifar10", "--data-root", tmp_path, "--image-size", "64")
    assert msg == ("Error: dataset 'cifar10' takes no parameter 'image_size' (--image-size applies to imagenet10 "
                   "and folder; the others have a fixed size)")
    assert "drop --data-root" in prepare_fails(tmp_path, "-d", "blockdigits", "--data-root", tmp_path)


def test_imagenet10_names_missing_wnids(tmp_path, imagenet_tree):
    import shutil

    src, _ = imagenet_tree
    root = tmp_path / "in"
    shutil.copytree(src, root)
    shutil.rmtree(root / "val" / "n02085620")  # Chihuahua (dog)
    shutil.rmtree(root / "val" / "n04612504")  # yawl (boat)
    msg = prepare_fails(tmp_path, "-d", "imagenet10", "--data-root", root, "--image-size", "16")
    assert "lacks 2 expected class folder(s)" in msg and "n02085620 (dog)" in msg and "n04612504 (boat)" in msg
    assert str(root / "val") in msg


def test_folder_bad_trees(tmp_path):
    from fastroar.datasets import build_dataset
    from fastroar.errors import ConfigError, MissingInputError

    root = tmp_path / "f"
    write_class_tree(root, ["a", "b"], {"train": 1}, seed=4)
    with pytest.raises(MissingInputError, match=r"has no val/ or test/ folder"):
        build_dataset("folder", root=str(root))
    write_class_tree(root, ["a"], {"val": 1}, seed=4)
    with pytest.raises(MissingInputError, match=r"lacks 1 expected class folder\(s\): b"):
        build_dataset("folder", root=str(root))
    (root / "val" / "b").mkdir()
    with pytest.raises(MissingInputError, match=r"hold no images.*: b"):
        build_dataset("folder", root=str(root))
    (root / "val" / "c").mkdir()
    with pytest.raises(MissingInputError, match=r"class folder\(s\) that .* lacks: c"):
        build_dataset("folder", root=str(root))
    with pytest.raises(ConfigError, match="image_size"):
        build_dataset("folder", root=str(root), image_size=4)
    with pytest.raises(ConfigError, match="cannot be downloaded"):
        build_dataset("imagenet10", root=str(root), download=True)


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_unreadable_image_is_named(tmp_path, damage):
    root = tmp_path / "f"
    files = write_class_tree(root, ["a", "b"], {"train": 3, "val": 1}, seed=5, sizes=[(64, 48)])
    bad = next(p for p in files["train"] if p.suffix == ".JPEG" and p.parent.name == "b")
    raw = bad.read_bytes()
    bad.write_bytes(b"this is not an image" if damage == "garbage" else raw[: len(raw) // 3])
    msg = prepare_fails(tmp_path, "-d", "folder", "--data-root", root, "--image-size", "16")
    assert f"cannot read image {bad}" in msg and "remove or replace the file" in msg


def test_built_package_ships_configs_and_imagenet10_mapping(tmp_path):
    """What `pip install .` (non-editable) installs: build_py copies configs/*.yaml into fastroar/configs/ and
    ships the ImageNet-10 mapping; fastroar.config finds the copied configs when no repository is around."""
    import subprocess
    import sys

    repo = Path(__file__).resolve().parent.parent
    build = tmp_path / "lib"
    subprocess.run([sys.executable, "setup.py", "-q", "build_py", "-d", str(build)], cwd=repo, check=True,
                   capture_output=True, env={**__import__("os").environ, "FASTROAR_NO_CUDA": "1"})
    assert sorted(p.name for p in (build / "fastroar" / "configs").glob("*.yaml")) == \
        sorted(p.name for p in (repo / "configs").glob("*.yaml"))
    assert (build / "fastroar" / "datasets" / "data" / "imagenet10.json").read_bytes() == \
        (repo / "fastroar" / "datasets" / "data" / "imagenet10.json").read_bytes()
    probe = ("import fastroar.config as c, fastroar.datasets.folder as f; "
             "print(c.config_dir()); print(len(f.imagenet10_mapping())); "
             "print(c.load_config('imagenet10').model.arch)")
    out = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path,
                         env={"PYTHONPATH": str(build), "PATH": "/usr/bin"},
                         check=True, capture_output=True, text=True).stdout.split()
    assert out == [str(build / "fastroar" / "configs"), "10", "resnet18"]
