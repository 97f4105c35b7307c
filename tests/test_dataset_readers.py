"""The CIFAR-10 / SVHN / MNIST readers on copies written here, in each native format, the way other tools
write them (re-pickled, re-saved .mat, gzipped idx): each mistake a user can make is named in one line
(missing file, checksum with expected and found MD5, bad structure, no network), exit 2, no traceback,
nothing written; `verify_checksums=false` reads faithful copies pixel for pixel, with a warning line."""
from __future__ import annotations

import gzip
import hashlib
import os
import pickle
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from fastroar.cli import cli

# The official files' MD5s (CIFAR-10 python version, SVHN cropped digits, MNIST .gz), written out here.
CIFAR_MD5 = {"data_batch_1": "c99cafc152244af753f735de768cd75f", "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
             "data_batch_3": "54ebc095f3ab1f0389bbae665268c751", "data_batch_4": "634d18415352ddfa80567beed471001a",
             "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb", "test_batch": "40351d587109b95175f43aff81a1287e"}
SVHN_MD5 = {"train_32x32.mat": "e26dedcc434d2e4c54c9b2d4a06d8373", "test_32x32.mat": "eb5a983be6a315427106f1b164d9cef3"}
MNIST_GZ_MD5 = {"train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
                "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
                "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
                "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c"}
BATCHES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
VERIFY_OFF = ["--set", "dataset.params.verify_checksums=false"]


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def tree(path: Path) -> dict[str, str]:
    """Every file under path -> its MD5 (empty when path does not exist)."""
    return {str(p.relative_to(path)): md5(p) for p in sorted(path.rglob("*")) if p.is_file()} if path.exists() else {}


# ---- each format, written independently ----

def cifar_copy(root: Path, n: int = 6, keys: str = "str", seed: int = 0) -> dict[str, tuple[np.ndarray, list]]:
    """cifar-10-batches-py/ as a Python 3 tool re-pickles it: dicts of 'data' (n, 3072) uint8 (R, G, B planes)
    and 'labels'; keys as str or as bytes. Returns batch -> (data, labels)."""
    rng = np.random.default_rng(seed)
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True, exist_ok=True)
    out = {}
    for batch in BATCHES:
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, n)]
        k = (lambda s: s.encode()) if keys == "bytes" else (lambda s: s)
        (d / batch).write_bytes(pickle.dumps({k("batch_label"): f"{batch}", k("data"): data, k("labels"): labels},
                                             protocol=4))
        out[batch] = (data, labels)
    (d / "batches.meta").write_bytes(pickle.dumps({"label_names": [f"c{i}" for i in range(10)]}))
    return out


def svhn_copy(root: Path, n: dict[str, int] | None = None, seed: int = 1) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{train,test}_32x32.mat re-saved with scipy: X (32, 32, 3, N) uint8, y (N, 1) in 1..10."""
    from scipy.io import savemat

    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    out = {}
    for split, count in (n or {"train": 30, "test": 12}).items():
        X = rng.integers(0, 256, (32, 32, 3, count), dtype=np.uint8)
        y = rng.integers(1, 11, (count, 1)).astype(np.uint8)
        y[0, 0] = 10  # at least one digit 0
        savemat(root / f"{split}_32x32.mat", {"X": X, "y": y})
        out[split] = (X, y)
    return out


def idx_bytes(a: np.ndarray) -> bytes:
    return bytes([0, 0, 8, a.ndim]) + struct.pack(f">{a.ndim}I", *a.shape) + a.astype(np.uint8).tobytes()


def mnist_gz_copy(root: Path, folder: str = "MNIST", seed: int = 2) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """<folder>/raw/ holding only the four *-ubyte.gz files, as downloaded and never unpacked."""
    rng = np.random.default_rng(seed)
    raw = root / folder / "raw"
    raw.mkdir(parents=True)
    out = {}
    for prefix, n in (("train", 25), ("t10k", 10)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, n).astype(np.uint8)
        (raw / f"{prefix}-images-idx3-ubyte.gz").write_bytes(gzip.compress(idx_bytes(images)))
        (raw / f"{prefix}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(labels)))
        out[prefix] = (images, labels)
    return out


# ---- the CLI, as a user runs it ----

def prepare(wd: Path, *args) -> object:
    return CliRunner().invoke(cli, ["prepare", "-w", str(wd), "--no-progress", *map(str, args)])


def fails(tmp_path: Path, *args) -> str:
    """prepare exits 2 with one line, no traceback, and writes nothing: no workdir data, data root unchanged."""
    root = Path(args[args.index("--data-root") + 1])
    before = tree(root)
    wd = tmp_path / "wd"
    result = prepare(wd, *args)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert not [p for p in (wd / "data").rglob("*") if p.is_file()]
    assert tree(root) == before
    return lines[0]


def prepared(wd: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    from fastroar.engine.beton import read_beton

    (data,) = (wd / "data").iterdir()
    return read_beton(str(data / f"{split}.beton"))


def accept_hint(msg: str) -> None:
    assert "add --set dataset.params.verify_checksums=false" in msg and "replace it with the official file" in msg


# ---- CIFAR-10 ----

def test_repickled_cifar_copy_is_a_checksum_mismatch_naming_the_file_and_both_md5s(tmp_path):
    cifar_copy(tmp_path / "c")
    msg = fails(tmp_path, "-d", "cifar10", "--data-root", tmp_path / "c")
    first = tmp_path / "c" / "cifar-10-batches-py" / "data_batch_1"
    assert msg.startswith(f"Error: checksum mismatch: {first} has MD5 {md5(first)}, the official cifar10 file's is "
                          f"{CIFAR_MD5['data_batch_1']} (also not the official bytes: data_batch_2, data_batch_3, "
                          "data_batch_4, data_batch_5, test_batch); "), msg
    accept_hint(msg)
    assert "--download" not in msg and "not found" not in msg


@pytest.mark.parametrize("keys", ["str", "bytes"])
def test_verify_checksums_false_reads_a_faithful_cifar_copy_pixel_for_pixel(tmp_path, keys):
    data = cifar_copy(tmp_path / "c", keys=keys)
    wd = tmp_path / "wd"
    result = prepare(wd, "-d", "cifar10", "--data-root", tmp_path / "c", *VERIFY_OFF)
    assert result.exit_code == 0, result.output
    (warning,) = [line for line in result.output.splitlines() if line.startswith("Warning:")]
    assert warning == ("Warning: cifar10: checksums not verified (verify_checksums=false): "
                       + ", ".join(f"cifar-10-batches-py/{b}" for b in BATCHES)
                       + " differ from the official files; read after checking their structure")
    for split, batches in (("train", BATCHES[:5]), ("test", BATCHES[5:])):
        images, labels = prepared(wd, split)
        np.testing.assert_array_equal(images, np.concatenate([data[b][0] for b in batches]).reshape(-1, 3, 32, 32))
        assert labels.tolist() == [y for b in batches for y in data[b][1]]
    # how the files were checked is not what the data are: the default (verified) config finds them prepared
    again = prepare(wd, "-d", "cifar10", "--data-root", tmp_path / "c")
    assert again.exit_code == 0 and "already in" in again.output and "Warning" not in again.output, again.output


def test_bytes_keyed_cifar_pickle_with_checksums_on_is_a_clear_message(tmp_path):
    cifar_copy(tmp_path / "c", keys="bytes")
    msg = fails(tmp_path, "-d", "cifar10", "--data-root", tmp_path / "c")
    assert "checksum mismatch" in msg and "KeyError" not in msg
    accept_hint(msg)


def test_cifar_missing_a_batch_names_it(tmp_path):
    cifar_copy(tmp_path / "c")
    (tmp_path / "c" / "cifar-10-batches-py" / "data_batch_3").unlink()
    for extra in ([], VERIFY_OFF):
        msg = fails(tmp_path, "-d", "cifar10", "--data-root", tmp_path / "c", *extra)
        assert msg == (f"Error: cifar10 under {tmp_path / 'c'} lacks cifar-10-batches-py/data_batch_3 (expected "
                       "cifar-10-batches-py/{data_batch_1..5,test_batch}); copy the missing file(s) there or add "
                       "--download to fetch what is missing")


def test_empty_root_says_where_the_dataset_goes(tmp_path):
    (tmp_path / "empty").mkdir()
    msg = fails(tmp_path, "-d", "cifar10", "--data-root", tmp_path / "empty")
    assert msg.startswith(f"Error: cifar10 under {tmp_path / 'empty'} lacks cifar-10-batches-py/data_batch_1, ")
    assert msg.endswith("put the dataset there or add --download to fetch what is missing")


@pytest.mark.parametrize("damage,why", [
    (lambda d: d.update(data=d["data"][:, :1024]), "'data' is a uint8 array of shape (6, 1024)"),
    (lambda d: d.update(labels=[10] * 6), "'labels' holds labels 10..10, expected 0..9"),
    (lambda d: d.update(labels=[0] * 5), "'labels' holds 5 values of type int64, expected 6 integer labels"),
    (lambda d: d.pop("data"), "its keys are ['batch_label', 'labels']"),
])
def test_cifar_structure_is_checked_when_checksums_are_off(tmp_path, damage, why):
    cifar_copy(tmp_path / "c")
    path = tmp_path / "c" / "cifar-10-batches-py" / "data_batch_2"
    entry = pickle.loads(path.read_bytes())
    damage(entry)
    path.write_bytes(pickle.dumps(entry))
    msg = fails(tmp_path, "-d", "cifar10", "--data-root", tmp_path / "c", *VERIFY_OFF)
    assert msg.startswith(f"Error: {path} is not a CIFAR-10 batch"), msg
    assert msg.endswith(f": {why}; replace it with the official file"), msg


def test_not_a_pickle_is_named(tmp_path):
    cifar_copy(tmp_path / "c")
    path = tmp_path / "c" / "cifar-10-batches-py" / "test_batch"
    path.write_bytes(b"<html>404 Not Found</html>")
    msg = fails(tmp_path, "-d", "cifar10", "--data-root", tmp_path / "c", *VERIFY_OFF)
    assert msg.startswith(f"Error: {path} is not a CIFAR-10 batch") and "it does not unpickle" in msg


def test_verify_checksums_must_be_a_boolean(tmp_path):
    cifar_copy(tmp_path / "c")
    msg = fails(tmp_path, "-d", "cifar10", "--data-root", tmp_path / "c",
                "--set", "dataset.params.verify_checksums=maybe")
    assert msg == "Error: dataset.params.verify_checksums is true or false, not 'maybe'"


# ---- SVHN ----

def test_resaved_svhn_mat_is_a_checksum_mismatch_then_accepted_with_verify_off(tmp_path):
    data = svhn_copy(tmp_path / "s")
    msg = fails(tmp_path, "-d", "svhn", "--data-root", tmp_path / "s")
    train = tmp_path / "s" / "train_32x32.mat"
    assert msg.startswith(f"Error: checksum mismatch: {train} has MD5 {md5(train)}, the official svhn file's is "
                          f"{SVHN_MD5['train_32x32.mat']} (also not the official bytes: test_32x32.mat); "), msg
    accept_hint(msg)

    wd = tmp_path / "wd"
    result = prepare(wd, "-d", "svhn", "--data-root", tmp_path / "s", *VERIFY_OFF)
    assert result.exit_code == 0, result.output
    assert ("Warning: svhn: checksums not verified (verify_checksums=false): train_32x32.mat, test_32x32.mat "
            "differ from the official files") in result.output
    for split in ("train", "test"):
        images, labels = prepared(wd, split)
        X, y = data[split]
        np.testing.assert_array_equal(images, X.transpose(3, 2, 0, 1))
        assert labels.tolist() == [int(v) % 10 for v in y[:, 0]]


def test_svhn_structure_is_checked(tmp_path):
    from scipy.io import savemat

    svhn_copy(tmp_path / "s")
    path = tmp_path / "s" / "test_32x32.mat"
    savemat(path, {"X": np.zeros((32, 32, 3, 4), np.uint8), "y": np.full((4, 1), 11, np.uint8)})
    msg = fails(tmp_path, "-d", "svhn", "--data-root", tmp_path / "s", *VERIFY_OFF)
    assert msg == (f"Error: {path} is not an SVHN .mat file (X (32, 32, 3, N) uint8, y (N, 1) in 1..10): "
                   "'y' holds labels 11..11, expected 0..10; replace it with the official file")


# ---- MNIST / Fashion-MNIST as the downloaded .gz files only ----

def test_mnist_gz_only_is_read_in_memory_leaving_the_data_root_unchanged(tmp_path, monkeypatch):
    """The downloaded, never unpacked .gz files: with their official MD5s they load as they are."""
    import torchvision.datasets as tvd

    data = mnist_gz_copy(tmp_path / "m")
    raw = tmp_path / "m" / "MNIST" / "raw"
    # these files play the official ones: torchvision's MD5 table (the reference) lists their MD5s
    monkeypatch.setattr(tvd.MNIST, "resources", [(f"https://example.invalid/{p.name}", md5(p)) for p in raw.iterdir()])
    before = tree(tmp_path / "m")
    wd = tmp_path / "wd"
    result = prepare(wd, "-d", "mnist", "--data-root", tmp_path / "m")
    assert result.exit_code == 0 and "Warning" not in result.output, result.output
    assert tree(tmp_path / "m") == before
    for split, prefix in (("train", "train"), ("test", "t10k")):
        images, labels = prepared(wd, split)
        np.testing.assert_array_equal(images[:, 0], data[prefix][0])
        assert labels.tolist() == data[prefix][1].tolist()


@pytest.mark.parametrize("name,folder", [("mnist", "MNIST"), ("fashion-mnist", "FashionMNIST")])
def test_regzipped_mnist_is_a_checksum_mismatch_then_accepted_with_verify_off(tmp_path, name, folder):
    data = mnist_gz_copy(tmp_path / "m", folder)
    gz = tmp_path / "m" / folder / "raw" / "train-images-idx3-ubyte.gz"
    msg = fails(tmp_path, "-d", name, "--data-root", tmp_path / "m")
    assert msg.startswith(f"Error: checksum mismatch: {gz} has MD5 {md5(gz)}, the official {name} file's is "), msg
    if name == "mnist":
        assert f"file's is {MNIST_GZ_MD5[gz.name]} (" in msg
    accept_hint(msg)

    before = tree(tmp_path / "m")
    wd = tmp_path / "wd"
    result = prepare(wd, "-d", name, "--data-root", tmp_path / "m", *VERIFY_OFF)
    assert result.exit_code == 0, result.output
    (warning,) = [line for line in result.output.splitlines() if line.startswith("Warning:")]
    for f in MNIST_GZ_MD5:
        assert f"{folder}/raw/{f}" in warning
    assert tree(tmp_path / "m") == before  # nothing unpacked into the user's data root
    images, labels = prepared(wd, "test")
    np.testing.assert_array_equal(images[:, 0], data["t10k"][0])
    assert labels.tolist() == data["t10k"][1].tolist()


def test_truncated_gz_is_named(tmp_path):
    mnist_gz_copy(tmp_path / "m")
    gz = tmp_path / "m" / "MNIST" / "raw" / "t10k-labels-idx1-ubyte.gz"
    gz.write_bytes(gz.read_bytes()[:15])
    msg = fails(tmp_path, "-d", "mnist", "--data-root", tmp_path / "m", *VERIFY_OFF)
    assert msg.startswith(f"Error: {gz} is not an idx file of unsigned bytes: it does not read (") and \
        msg.endswith("; replace it with the official file")


# ---- --download without a network ----

def test_download_without_network_is_one_line_and_creates_nothing(tmp_path):
    """A user's shell: the real CLI in a subprocess whose proxy refuses every connection."""
    root, wd = tmp_path / "nowhere", tmp_path / "wd"
    env = {**os.environ, "http_proxy": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9",
           "HTTP_PROXY": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9", "no_proxy": "", "NO_PROXY": "",
           "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.run([sys.executable, "-m", "fastroar.cli", "prepare", "-d", "cifar10", "--data-root", str(root),
                           "--download", "-w", str(wd), "--no-progress"],
                          capture_output=True, text=True, env=env, timeout=300)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 2, output
    assert "Traceback" not in output and len(output.strip().splitlines()) == 1, output
    assert output.startswith("Error: could not download cifar-10-python.tar.gz: no network ("), output
    assert output.strip().endswith(f"); place the files under {root} as "
                                   "cifar-10-batches-py/{data_batch_1..5,test_batch}")
    assert not root.exists()
    assert not [p for p in (wd / "data").rglob("*") if p.is_file()]


def test_mnist_download_tries_each_mirror_then_says_one_line(tmp_path, monkeypatch):
    import urllib.error
    import urllib.request
    from urllib.parse import urlparse

    import torchvision.datasets as tvd

    tried = []

    def refuse(request, *a, **k):
        tried.append(getattr(request, "full_url", request))
        raise urllib.error.URLError(ConnectionRefusedError(111, "Connection refused"))

    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    (tmp_path / "m").mkdir()
    msg = fails(tmp_path, "-d", "mnist", "--data-root", tmp_path / "m", "--download")
    assert msg == (f"Error: could not download train-images-idx3-ubyte.gz: no network ([Errno 111] Connection "
                   f"refused); place the files under {tmp_path / 'm'} as MNIST/raw/{{train,t10k}}-{{images-idx3,"
                   "labels-idx1}-ubyte (or the downloaded .gz files)")
    assert {urlparse(u).netloc for u in tried} == {urlparse(m).netloc for m in tvd.MNIST.mirrors}  # each mirror
    assert not (tmp_path / "m" / "MNIST").exists()  # no empty folders left behind


# ---- idx files by the MD5 of their content: Debian's flat layout, dot names, re-compressed copies ----

def idx_files(seed: int = 3) -> dict[str, bytes]:
    """The four idx files' decompressed bytes, by dash name (small random images and labels)."""
    rng = np.random.default_rng(seed)
    out = {}
    for prefix, n in (("train", 12), ("t10k", 5)):
        out[f"{prefix}-images-idx3-ubyte"] = idx_bytes(rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        out[f"{prefix}-labels-idx1-ubyte"] = idx_bytes(rng.integers(0, 10, n).astype(np.uint8))
    return out


def as_official(monkeypatch, name: str, files: dict[str, bytes]) -> None:
    """These files' content plays the official release's: the checksum table lists its MD5s."""
    from fastroar.datasets import native

    monkeypatch.setitem(native.IDX_MD5, name, {f: hashlib.md5(b).hexdigest() for f, b in files.items()})


def write_gz(folder: Path, files: dict[str, bytes], level: int, name=lambda f: f) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for f, b in files.items():
        (folder / f"{name(f)}.gz").write_bytes(gzip.compress(b, compresslevel=level, mtime=0))


def check_prepared(wd: Path, files: dict[str, bytes]) -> None:
    from fastroar.datasets.native import read_idx

    for split, prefix in (("train", "train"), ("test", "t10k")):
        images, labels = prepared(wd, split)
        raw = wd.parent / f"{prefix}.idx"
        raw.write_bytes(files[f"{prefix}-images-idx3-ubyte"])
        np.testing.assert_array_equal(images[:, 0], read_idx(raw))
        raw.write_bytes(files[f"{prefix}-labels-idx1-ubyte"])
        assert labels.tolist() == read_idx(raw).tolist()


@pytest.mark.parametrize("root_is", ["parent", "folder"])
def test_debian_flat_recompressed_fashion_mnist_passes_the_check(tmp_path, monkeypatch, root_is):
    """Debian's layout (fashion-mnist/*.gz, re-compressed: the .gz MD5s are not torchvision's) is read with
    checksums on, because the content's MD5s are the official ones."""
    import torchvision.datasets as tvd

    files = idx_files()
    as_official(monkeypatch, "fashion-mnist", files)
    upstream = tmp_path / "upstream"
    write_gz(upstream, files, level=9)  # the "official" archives: torchvision's table lists their MD5s
    monkeypatch.setattr(tvd.FashionMNIST, "resources",
                        [(f"https://example.invalid/{p.name}", md5(p)) for p in upstream.iterdir()])
    debian = tmp_path / "datasets" / "fashion-mnist"
    write_gz(debian, files, level=1)  # re-compressed: other .gz bytes, same content
    assert {md5(p) for p in debian.iterdir()}.isdisjoint(md5(p) for p in upstream.iterdir())
    wd = tmp_path / "wd"
    root = debian.parent if root_is == "parent" else debian
    result = prepare(wd, "-d", "fashion-mnist", "--data-root", root)
    assert result.exit_code == 0 and "Warning" not in result.output, result.output
    check_prepared(wd, files)


def test_changed_content_fails_naming_the_file_and_both_content_md5s(tmp_path, monkeypatch):
    files = idx_files()
    as_official(monkeypatch, "fashion-mnist", files)
    changed = dict(files)
    body = bytearray(files["t10k-images-idx3-ubyte"])
    body[-1] ^= 1  # one pixel's lowest bit
    changed["t10k-images-idx3-ubyte"] = bytes(body)
    write_gz(tmp_path / "d" / "fashion-mnist", changed, level=6)
    gz = tmp_path / "d" / "fashion-mnist" / "t10k-images-idx3-ubyte.gz"
    msg = fails(tmp_path, "-d", "fashion-mnist", "--data-root", tmp_path / "d")
    assert msg.startswith(f"Error: checksum mismatch: {gz} has MD5 {md5(gz)}, the official fashion-mnist file's is "
                          ), msg
    assert (f"(its decompressed bytes' MD5 is {hashlib.md5(body).hexdigest()}, the official's "
            f"{hashlib.md5(files['t10k-images-idx3-ubyte']).hexdigest()}); ") in msg, msg
    assert "also not" not in msg  # the three unchanged files pass
    accept_hint(msg)


def test_dot_names_of_the_original_release_are_read_plain_and_gz(tmp_path, monkeypatch):
    """train-images.idx3-ubyte (the original MNIST release's names), unpacked, and one still .gz."""
    files = idx_files(seed=4)
    as_official(monkeypatch, "mnist", files)
    raw = tmp_path / "m" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for f, b in files.items():
        dot = f.replace("-idx", ".idx")
        if f.startswith("t10k-labels"):
            (raw / f"{dot}.gz").write_bytes(gzip.compress(b))
        else:
            (raw / dot).write_bytes(b)
    wd = tmp_path / "wd"
    result = prepare(wd, "-d", "mnist", "--data-root", tmp_path / "m")
    assert result.exit_code == 0 and "Warning" not in result.output, result.output
    check_prepared(wd, files)


def test_unpacked_file_with_other_content_fails(tmp_path, monkeypatch):
    files = idx_files()
    as_official(monkeypatch, "mnist", files)
    raw = tmp_path / "m" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for f, b in files.items():
        (raw / f).write_bytes(b if f != "train-labels-idx1-ubyte" else b[:-1] + bytes([(b[-1] + 1) % 10]))
    path = raw / "train-labels-idx1-ubyte"
    msg = fails(tmp_path, "-d", "mnist", "--data-root", tmp_path / "m")
    assert msg.startswith(f"Error: checksum mismatch: {path} has MD5 {md5(path)}, the official mnist file's is "
                          f"{hashlib.md5(files['train-labels-idx1-ubyte']).hexdigest()}; "), msg


def test_idx_mismatch_takes_the_expected_table(tmp_path):
    from fastroar.datasets.native import idx_mismatch

    content = idx_bytes(np.arange(6, dtype=np.uint8))
    want = hashlib.md5(content).hexdigest()
    plain, gz = tmp_path / "a-idx1-ubyte", tmp_path / "a-idx1-ubyte.gz"
    plain.write_bytes(content)
    gz.write_bytes(gzip.compress(content, mtime=0))
    assert idx_mismatch(plain, want) is None and idx_mismatch(gz, want) is None
    assert idx_mismatch(gz, "0" * 32, archive_md5=md5(gz)) is None  # the official archive as it is
    assert idx_mismatch(plain, "0" * 32) == ("0" * 32, want, "")
    assert idx_mismatch(gz, "0" * 32, archive_md5="1" * 32) == (
        "1" * 32, md5(gz), f"its decompressed bytes' MD5 is {want}, the official's {'0' * 32}")
    assert idx_mismatch(plain, None) is None  # no reference: nothing to check


def test_blockmnist_without_data_root_names_blockmnist(tmp_path):
    result = prepare(tmp_path / "wd", "-d", "blockmnist")
    assert result.exit_code == 2
    assert result.output.strip() == (
        "Error: dataset 'blockmnist' is built from mnist read from disk: pass --data-root DIR holding "
        "MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte (or the downloaded .gz files) "
        "(add --download to fetch it)"), result.output


def test_missing_idx_files_say_what_was_found_where(tmp_path, monkeypatch):
    files = idx_files()
    as_official(monkeypatch, "mnist", files)
    raw = tmp_path / "m" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for f in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"):
        (raw / f).write_bytes(files[f])
    (tmp_path / "m" / "t10k-images-idx3-ubyte.zip").write_bytes(b"PK")
    msg = fails(tmp_path, "-d", "blockmnist-top", "--data-root", tmp_path / "m")
    assert msg == (f"Error: mnist (for blockmnist-top) under {tmp_path / 'm'} lacks MNIST/raw/t10k-images-idx3-ubyte, "
                   "MNIST/raw/t10k-labels-idx1-ubyte (expected MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte "
                   "(or the downloaded .gz files); found MNIST/raw/: train-images-idx3-ubyte, train-labels-idx1-ubyte; "
                   "./: t10k-images-idx3-ubyte.zip); copy the missing file(s) there or add --download to fetch what "
                   "is missing"), msg
