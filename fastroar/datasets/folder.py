"""Image-folder datasets: ``imagenet10`` (the paper's ImageNet-10) and a user's own ``folder``.

Layout under --data-root (the standard ImageNet / torchvision ImageFolder layout)::

    train/<class>/<image>      e.g. train/n02085620/n02085620_10074.JPEG
    val/<class>/<image>        (``test/`` is accepted instead of ``val/`` for ``folder``)

For ``imagenet10`` the class folders are ImageNet-1k wnids; the 60 wnids of the 10 superclasses are
shipped as ``fastroar/datasets/data/imagenet10.json`` (derived by tools/derive_imagenet10.py from the
robustness library's ``mixed_10`` selection), so no ImageNet metadata files are needed. ImageNet's
validation images must be sorted into class folders (as torchvision's ImageNet/ImageFolder expect).
For ``folder`` the classes are train/'s subfolders in sorted order; val/ must hold the same ones.

Transform, train and test alike: decode to RGB, resize the shorter side to ``resize`` (default
round(image_size * 8/7): 128 for 112, as the robustness library's test transform, 256 for 224) with
bilinear interpolation, then center-crop image_size x image_size (torchvision's Resize + CenterCrop).
Any input size works (small images are upscaled). There is deliberately no train-time augmentation
(the paper's training used random-resized crops and flips): DiffROAR's rank maps and masks are per
pixel, computed once per image, so the pixel a mask addresses must be the pixel the model sees in
every epoch; a random crop or flip would move the image under its mask.

Storage: the transformed images are written once to the .beton as raw uint8 (N, 3, S, S) arrays, not
JPEG. Raw is exact: the attribution, its rank map and the retraining loader all read the very bytes
that were stored, and the masked loader applies masks to them while decoding. Re-encoding as JPEG
would be lossy (the stored pixels would differ from the transformed ones) and decoder-dependent, so
the masked pixels could differ from the pixels that were attributed. The cost is disk space:
37,632 bytes per image at 112 px (about 3 GB for ImageNet-10's 78k training images), 150,528 at 224.

Images are decoded lazily (``LazyImages``): the .beton writer's worker processes pull them one by
one, so a dataset of tens of thousands of images never sits whole in memory. An unreadable image
stops ``prepare`` with an error naming the file.
"""
from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from fastroar.datasets.base import Dataset, Split
from fastroar.errors import ConfigError, MissingInputError

EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".webp", ".tif", ".tiff", ".gif")


def default_resize(image_size: int) -> int:
    """The shorter side before the center crop: image_size * 8/7 (128 for 112, 256 for 224)."""
    return int(round(image_size * 8 / 7))


class LazyImages:
    """Array-like (N, 3, S, S) uint8 over image files, decoding and transforming on access."""

    def __init__(self, paths: Sequence[Path], image_size: int, resize: int) -> None:
        self.paths = [Path(p) for p in paths]
        self.image_size, self.resize = int(image_size), int(resize)
        self.shape = (len(self.paths), 3, self.image_size, self.image_size)
        self.dtype = np.dtype(np.uint8)
        self.ndim = 4

    def __len__(self) -> int:
        return len(self.paths)

    def load(self, i: int) -> np.ndarray:
        """Image i as (3, S, S) uint8 after the documented resize + center crop."""
        from PIL import Image
        from torchvision.transforms import functional as F

        path = self.paths[i]
        try:
            with Image.open(path) as img:
                img = img.convert("RGB")
                img = F.center_crop(F.resize(img, self.resize), [self.image_size, self.image_size])
        except Exception as e:  # PIL raises OSError, UnidentifiedImageError, ValueError, SyntaxError, ...
            raise MissingInputError(f"cannot read image {path} ({type(e).__name__}: {e}); "
                                    "remove or replace the file and rerun `fastroar prepare`") from None
        return np.asarray(img, dtype=np.uint8).transpose(2, 0, 1).copy()

    def __getitem__(self, index):
        if isinstance(index, (int, np.integer)):
            return self.load(int(index))
        idx = range(len(self))[index] if isinstance(index, slice) else np.asarray(index).reshape(-1)
        if not len(idx):
            return np.zeros((0, *self.shape[1:]), np.uint8)
        return np.stack([self.load(int(i)) for i in idx])

    def __array__(self, dtype=None, copy=None):
        out = self[:]
        return out if dtype is None else out.astype(dtype)


def list_images(directory: Path) -> list[Path]:
    """Image files under `directory` (recursively), by extension, sorted by path."""
    return sorted(p for p in directory.rglob("*") if p.suffix.lower() in EXTENSIONS and p.is_file())


def check_root(root: str | None, name: str) -> Path:
    if not root:
        raise ConfigError(f"dataset {name!r} is read from disk: pass --data-root DIR (with train/ and val/ "
                          "inside, one folder per class)")
    path = Path(root).expanduser()
    if not path.is_dir():
        raise MissingInputError(f"--data-root {path} does not exist (expected {path}/train/<class>/<image> "
                                f"and {path}/val/<class>/<image>)")
    return path


def split_dir(root: Path, names: Sequence[str]) -> Path:
    for n in names:
        if (root / n).is_dir():
            return root / n
    raise MissingInputError(f"{root} has no {' or '.join(n + '/' for n in names)} folder (expected "
                            f"{root}/{names[0]}/<class>/<image>)")


MAX_IMAGE_SIZE = 1024  # a 1024 x 1024 x 3 image is 3 MiB; beyond that a typo, not a study


def check_image_size(image_size: Any, resize: Any) -> tuple[int, int]:
    """(image_size, resize) validated; resize defaults to round(image_size * 8/7)."""
    if isinstance(image_size, bool) or not isinstance(image_size, int) or not 8 <= image_size <= MAX_IMAGE_SIZE:
        raise ConfigError(f"image_size must be an integer from 8 to {MAX_IMAGE_SIZE} (the paper uses 112 or "
                          f"224), got {image_size!r}")
    if resize is None:
        return image_size, default_resize(image_size)
    if isinstance(resize, bool) or not isinstance(resize, int) or not image_size <= resize <= 2 * MAX_IMAGE_SIZE:
        raise ConfigError(f"resize (the shorter side before the center crop) must be an integer >= image_size "
                          f"({image_size}), got {resize!r}")
    return image_size, resize


def _names(items: Sequence[str], limit: int = 12) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def scan_split(directory: Path, classes: Sequence[tuple[str, Sequence[str]]]) -> tuple[list[Path], np.ndarray]:
    """(image paths, labels) of one split. classes: (label name, its subfolders) in label order.

    Raises MissingInputError naming every missing or empty class folder.
    """
    missing, empty = [], []
    paths: list[Path] = []
    labels: list[int] = []
    for label, (name, folders) in enumerate(classes):
        for folder in folders:
            d = directory / folder
            if not d.is_dir():
                missing.append(folder if folder == name else f"{folder} ({name})")
                continue
            files = list_images(d)
            if not files:
                empty.append(folder if folder == name else f"{folder} ({name})")
            paths += files
            labels += [label] * len(files)
    if missing:
        raise MissingInputError(f"{directory} lacks {len(missing)} expected class folder(s): {_names(missing)}; "
                                f"each needs {directory}/<class>/<image>")
    if empty:
        raise MissingInputError(f"class folder(s) in {directory} hold no images ({', '.join(EXTENSIONS)}): "
                                f"{_names(empty)}")
    return paths, np.asarray(labels, np.int64)


def _split(directory: Path, classes, image_size: int, resize: int) -> Split:
    paths, labels = scan_split(directory, classes)
    return Split(LazyImages(paths, image_size, resize), labels)  # type: ignore[arg-type]


def build_folder(root: str | None = None, image_size: int = 112, resize: int | None = None,
                 download: bool = False, seed: int = 0) -> Dataset:
    """A user's ImageFolder tree: classes are train/'s subfolders, in sorted order; val/ (or test/) alike."""
    size, resize = check_image_size(image_size, resize)
    if download:
        raise ConfigError("dataset 'folder' reads your own images; --download does not apply")
    base = check_root(root, "folder")
    train_dir, test_dir = split_dir(base, ["train"]), split_dir(base, ["val", "test"])
    names = sorted(p.name for p in train_dir.iterdir() if p.is_dir())
    if len(names) < 2:
        raise MissingInputError(f"{train_dir} has {len(names)} class folder(s); a classification dataset needs "
                                f"at least 2 ({train_dir}/<class>/<image>)")
    extra = sorted(p.name for p in test_dir.iterdir() if p.is_dir() and p.name not in names)
    if extra:
        raise MissingInputError(f"{test_dir} has class folder(s) that {train_dir} lacks: {_names(extra)}")
    classes = [(c, [c]) for c in names]
    return Dataset(name="folder", train=_split(train_dir, classes, size, resize),
                   test=_split(test_dir, classes, size, resize), num_classes=len(names),
                   params={"root": str(base.resolve()), "image_size": size, "resize": resize, "classes": names,
                           "seed": seed})


def imagenet10_mapping() -> list[dict[str, Any]]:
    """The shipped ImageNet-10 superclasses in label order:
    {label, name, wnid, members: [{wnid, imagenet_index, name}]}."""
    text = resources.files("fastroar.datasets").joinpath("data/imagenet10.json").read_text()
    superclasses = json.loads(text)["superclasses"]
    assert [s["label"] for s in superclasses] == list(range(len(superclasses)))
    return superclasses


def build_imagenet10(root: str | None = None, image_size: int = 112, resize: int | None = None,
                     download: bool = False, seed: int = 0) -> Dataset:
    """ImageNet-10 (the robustness library's balanced mixed_10: 10 superclasses x 6 ImageNet classes) from an
    ImageNet train/ and val/ tree of wnid folders; label = superclass index (dog 0, bird 1, ..., boat 9)."""
    size, resize = check_image_size(image_size, resize)
    if download:
        raise ConfigError("ImageNet cannot be downloaded automatically; get ILSVRC-2012 from image-net.org and "
                          "pass --data-root with train/<wnid>/ and val/<wnid>/")
    base = check_root(root, "imagenet10")
    mapping = imagenet10_mapping()
    classes = [(s["name"], [m["wnid"] for m in s["members"]]) for s in mapping]
    return Dataset(name="imagenet10", train=_split(split_dir(base, ["train"]), classes, size, resize),
                   test=_split(split_dir(base, ["val"]), classes, size, resize), num_classes=len(classes),
                   params={"root": str(base.resolve()), "image_size": size, "resize": resize,
                           "classes": [s["name"] for s in mapping], "seed": seed})
