"""Small datasets in each dataset's native on-disk format (the files torchvision and ImageFolder read),
generated here so that no test downloads anything."""
from __future__ import annotations

import pickle
import struct
from pathlib import Path

import numpy as np


def write_idx(path: Path, array: np.ndarray) -> None:
    """An IDX (MNIST) file: magic 0x0800|ndim for uint8, big-endian sizes, then the bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = struct.pack(">I", 0x0800 | array.ndim) + b"".join(struct.pack(">I", s) for s in array.shape)
    path.write_bytes(header + np.ascontiguousarray(array, np.uint8).tobytes())


def write_mnist(root: Path, folder: str, n_train: int, n_test: int, seed: int = 0) -> dict:
    """torchvision's MNIST/FashionMNIST layout: root/<folder>/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte."""
    rng = np.random.default_rng(seed)
    out = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, n).astype(np.uint8)
        write_idx(root / folder / "raw" / f"{prefix}-images-idx3-ubyte", images)
        write_idx(root / folder / "raw" / f"{prefix}-labels-idx1-ubyte", labels)
        out[prefix] = (images, labels)
    return out


def write_cifar10(root: Path, n_per_batch: int, seed: int = 0) -> dict:
    """torchvision's CIFAR-10 layout: root/cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}."""
    rng = np.random.default_rng(seed)
    base = root / "cifar-10-batches-py"
    base.mkdir(parents=True, exist_ok=True)
    out = {"train": [], "test": []}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (n_per_batch, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, n_per_batch).tolist()
        with open(base / name, "wb") as f:
            pickle.dump({"data": data, "labels": labels}, f)
        out["test" if name == "test_batch" else "train"].append((data, labels))
    with open(base / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"class{i}" for i in range(10)]}, f)
    return out


def write_svhn(root: Path, n_train: int, n_test: int, seed: int = 0) -> dict:
    """torchvision's SVHN layout: root/{train,test}_32x32.mat with X (32, 32, 3, N) and y (N, 1) in 1..10."""
    from scipy.io import savemat

    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    out = {}
    for split, n in (("train", n_train), ("test", n_test)):
        X = rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8)
        y = rng.integers(1, 11, (n, 1)).astype(np.uint8)
        savemat(root / f"{split}_32x32.mat", {"X": X, "y": y})
        out[split] = (X, y)
    return out


def write_image_folder(root: Path, classes: list[str], per_class: int, size: tuple[int, int] = (40, 30),
                       splits=("train", "val"), seed: int = 0) -> None:
    """An ImageFolder-style tree root/<split>/<class>/<i>.JPEG of random-colour JPEGs."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split in splits:
        for c in classes:
            d = root / split / c
            d.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
                Image.fromarray(pixels).save(d / f"{c}_{i}.JPEG", quality=90)


def write_class_tree(root: Path, classes: list[str], per_class: dict[str, int], seed: int = 0,
                     sizes: list[tuple[int, int]] | None = None) -> dict[str, list[Path]]:
    """root/<split>/<class>/<class>_<i>.<ext>: per_class maps split -> images per class. Images cycle through
    `sizes` ((width, height), odd aspect ratios by default) and formats: RGB JPEG, mostly; every 5th a
    grayscale PNG, every 7th an RGBA PNG (all must come out as RGB). Returns split -> files written."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    sizes = sizes or [(40, 30), (23, 57), (64, 64), (50, 49), (37, 37)]
    written: dict[str, list[Path]] = {}
    count = 0
    for split, n in per_class.items():
        written[split] = []
        for c in classes:
            d = root / split / c
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                w, h = sizes[count % len(sizes)]
                if count % 5 == 4:
                    img, ext = Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8), "L"), "png"
                elif count % 7 == 6:
                    img, ext = Image.fromarray(rng.integers(0, 256, (h, w, 4), dtype=np.uint8), "RGBA"), "png"
                else:
                    img, ext = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)), "JPEG"
                path = d / f"{c}_{i}.{ext}"
                img.save(path, **({"quality": 90} if ext == "JPEG" else {}))
                written[split].append(path)
                count += 1
    return written


def idx_content_md5s(folder: Path) -> dict[str, str]:
    """{dash name: MD5 of the decompressed bytes} of the idx files in `folder` (plain or .gz, dash or dot
    names): what a test registers as the official table when its files play the official ones."""
    import gzip
    import hashlib

    out = {}
    for p in folder.iterdir():
        data = gzip.decompress(p.read_bytes()) if p.suffix == ".gz" else p.read_bytes()
        out[p.name.removesuffix(".gz").replace(".idx", "-idx")] = hashlib.md5(data).hexdigest()
    return out
