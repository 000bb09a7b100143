"""Tests for sorobust.data (real MNIST from $SOROBUST_DATA_DIR, default <repo>/../shared/data)."""

import os
import socket
from pathlib import Path
from urllib.error import URLError

import numpy as np
import pytest
import torch
import torchvision.datasets.mnist as tv_mnist

from sorobust import data
from sorobust.errors import SorobustError

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def no_network(monkeypatch):
    """Make every download attempt and socket connection fail loudly; returns the list of attempts."""
    attempts = []

    def fake_download(url, download_root, filename=None, md5=None, **kw):
        attempts.append(url)
        raise URLError("network disabled in tests")

    def fake_connect(self, *a, **kw):
        attempts.append(("connect", a))
        raise OSError("network disabled in tests")

    monkeypatch.setattr(tv_mnist, "download_and_extract_archive", fake_download)
    monkeypatch.setattr(socket.socket, "connect", fake_connect)
    return attempts


def _read_idx(path):
    """Independent IDX reader: big-endian magic (0, 0, dtype code, ndim), ndim big-endian int32 dims, data."""
    raw = Path(path).read_bytes()
    assert raw[0] == 0 and raw[1] == 0 and raw[2] == 0x08  # unsigned byte
    ndim = raw[3]
    dims = np.frombuffer(raw, dtype=">i4", count=ndim, offset=4)
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(tuple(int(d) for d in dims))


def _tree_state(root):
    return {
        str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()
    }


def test_load_tensors_shapes_dtypes_range(data_dir, no_network):
    X, y = data.load_tensors("mnist", split="test", data_dir=data_dir, limit=64)
    assert X.shape == (64, 1, 28, 28) and X.dtype == torch.float32
    assert y.shape == (64,) and y.dtype == torch.int64
    assert float(X.min()) == 0.0 and float(X.max()) == 1.0
    assert set(y.tolist()) <= set(range(10))
    assert no_network == []  # data present: no download, no connection attempted


def test_first_points_match_raw_idx(data_dir):
    X, y = data.load_tensors("mnist", split="test", data_dir=data_dir, limit=10)
    raw = data_dir / "MNIST" / "raw"
    labels = _read_idx(raw / "t10k-labels-idx1-ubyte")
    assert labels.shape == (10000,)
    assert y.tolist() == labels[:10].astype(np.int64).tolist()
    images = _read_idx(raw / "t10k-images-idx3-ubyte")
    assert images.shape == (10000, 28, 28)
    expected = torch.from_numpy(images[:10].astype(np.float32) / np.float32(255.0)).unsqueeze(1)
    assert torch.equal(X, expected)


def test_load_tensors_equals_totensor_items(data_dir):
    ds = data.load_dataset("mnist", split="test", data_dir=data_dir)
    assert len(ds) == 10000
    X, y = data.load_tensors("mnist", split="test", data_dir=data_dir, limit=5)
    for i in range(5):
        img, label = ds[i]
        assert torch.equal(img, X[i]) and label == int(y[i])


def test_limit_edge_cases(data_dir):
    X, y = data.load_tensors("mnist", data_dir=data_dir, limit=0)
    assert X.shape == (0, 1, 28, 28) and y.shape == (0,)
    X, _ = data.load_tensors("mnist", data_dir=data_dir, limit=10**6)
    assert X.shape[0] == 10000
    with pytest.raises(SorobustError):
        data.load_tensors("mnist", data_dir=data_dir, limit=-1)


def test_loading_does_not_modify_data_dir(data_dir):
    before = _tree_state(data_dir / "MNIST")
    data.load_tensors("mnist", data_dir=data_dir, limit=3, download=True)
    assert _tree_state(data_dir / "MNIST") == before


def test_unknown_dataset_and_split(data_dir):
    with pytest.raises(SorobustError) as ei:
        data.load_tensors("cifar10", data_dir=data_dir)
    msg = str(ei.value)
    assert "cifar10" in msg and all(n in msg for n in data.DATASETS)
    with pytest.raises(SorobustError, match="split"):
        data.load_tensors("mnist", split="val", data_dir=data_dir)


@pytest.mark.parametrize("name", data.DATASETS)
def test_missing_data_failed_download(tmp_path, monkeypatch, name):
    monkeypatch.delenv("SOROBUST_DATA_DIR", raising=False)
    calls = []

    def partial_download(url, download_root, filename=None, md5=None, **kw):
        # mimic an interrupted download: a partial archive and a partial extracted file, then failure
        calls.append(url)
        os.makedirs(download_root, exist_ok=True)
        Path(download_root, filename).write_bytes(b"\x1f\x8b partial")
        Path(download_root, filename[:-3]).write_bytes(b"\x00\x00\x08")
        raise URLError("offline")

    monkeypatch.setattr(tv_mnist, "download_and_extract_archive", partial_download)
    root = tmp_path / "nodata"
    with pytest.raises(SorobustError) as ei:
        data.load_tensors(name, data_dir=root)
    msg = str(ei.value)
    assert calls, "download should have been attempted"
    assert "\n" not in msg
    assert str(root) in msg and "SOROBUST_DATA_DIR" in msg and "--data-dir" in msg
    assert not root.exists()  # everything the attempt created was removed
    assert list(tmp_path.iterdir()) == []


def test_failed_download_keeps_preexisting_files(tmp_path, monkeypatch):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    (raw / "train-labels-idx1-ubyte").write_bytes(b"mine")

    def partial_download(url, download_root, filename=None, md5=None, **kw):
        Path(download_root, filename).write_bytes(b"partial")
        raise URLError("offline")

    monkeypatch.setattr(tv_mnist, "download_and_extract_archive", partial_download)
    with pytest.raises(SorobustError):
        data.load_tensors("mnist", data_dir=tmp_path)
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == [
        "MNIST",
        "MNIST/raw",
        "MNIST/raw/train-labels-idx1-ubyte",
    ]
    assert (raw / "train-labels-idx1-ubyte").read_bytes() == b"mine"


def test_missing_data_no_download(tmp_path, no_network):
    with pytest.raises(SorobustError) as ei:
        data.load_dataset("mnist", data_dir=tmp_path, download=False)
    assert no_network == []
    msg = str(ei.value)
    assert "\n" not in msg and str(tmp_path) in msg and "SOROBUST_DATA_DIR" in msg
    assert list(tmp_path.iterdir()) == []


def test_corrupt_raw_files(tmp_path, no_network):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for f in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (raw / f).write_bytes(b"\x00\x00\x08\x03\x00")  # truncated header
    with pytest.raises(SorobustError) as ei:
        data.load_tensors("mnist", data_dir=tmp_path)
    assert "\n" not in str(ei.value) and str(raw) in str(ei.value)
    assert no_network == []


def test_resolve_data_dir_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("SOROBUST_DATA_DIR", str(tmp_path / "env"))
    assert data.resolve_data_dir(tmp_path / "arg") == tmp_path / "arg"
    assert data.resolve_data_dir(str(tmp_path / "arg")) == tmp_path / "arg"
    assert data.resolve_data_dir() == tmp_path / "env"
    assert data.resolve_data_dir(None) == tmp_path / "env"
    monkeypatch.delenv("SOROBUST_DATA_DIR")
    assert data.resolve_data_dir() == Path("data")
    monkeypatch.setenv("SOROBUST_DATA_DIR", "")
    assert data.resolve_data_dir() == Path("data")


def test_loader_deterministic(data_dir):
    def order(shuffle, seed):
        ld = data.loader("mnist", "test", batch_size=16, shuffle=shuffle, seed=seed, data_dir=data_dir, limit=40)
        batches = list(ld)
        assert [b[0].shape[0] for b in batches] == [16, 16, 8]
        assert batches[0][0].shape[1:] == (1, 28, 28) and batches[0][1].dtype == torch.int64
        return torch.cat([b[1] for b in batches]).tolist(), torch.cat([b[0] for b in batches])

    X, _ = data.load_tensors("mnist", data_dir=data_dir, limit=40)
    plain_y, plain_X = order(False, 0)
    assert torch.equal(plain_X, X)
    a, _ = order(True, 123)
    torch.manual_seed(999)  # global RNG must not matter
    b, _ = order(True, 123)
    c, _ = order(True, 124)
    assert a == b
    assert sorted(a) == sorted(plain_y)
    assert a != plain_y and a != c


# ------------------------------------------------------------------- verification: one line for every bad input
def _copy_mnist(data_dir, root, folder="MNIST"):
    """``root/<folder>/raw`` holding writable copies of the genuine test files and links to the train files."""
    raw = root / folder / "raw"
    raw.mkdir(parents=True)
    for f in data._RAW_FILES:
        src = data_dir / "MNIST" / "raw" / f
        if f.startswith("t10k"):
            (raw / f).write_bytes(src.read_bytes())
        else:
            (raw / f).symlink_to(src)
    return raw


def _patch(name, offset, value):
    """A mutation writing the bytes ``value`` at ``offset`` of raw file ``name``."""

    def mutate(raw):
        """Overwrite the bytes in place."""
        b = bytearray((raw / name).read_bytes())
        b[offset:offset + len(value)] = value
        (raw / name).write_bytes(bytes(b))

    return mutate


def _cut(name, size):
    """A mutation truncating raw file ``name`` to ``size`` bytes."""

    def mutate(raw):
        """Cut the file."""
        (raw / name).write_bytes((raw / name).read_bytes()[:size])

    return mutate


def _append(name, extra):
    """A mutation appending ``extra`` to raw file ``name``."""

    def mutate(raw):
        """Pad the file."""
        (raw / name).write_bytes((raw / name).read_bytes() + extra)

    return mutate


def _flip_label(raw):
    """Label 0 of the test set becomes the next digit: still in 0-9, so only the checksum can tell."""
    p = raw / "t10k-labels-idx1-ubyte"
    b = bytearray(p.read_bytes())
    b[8] = (b[8] + 1) % 10
    p.write_bytes(bytes(b))


_LAB, _IMG = "t10k-labels-idx1-ubyte", "t10k-images-idx3-ubyte"
_BAD_DATA = [  # (id, mutation of raw/, file named, words the one line must hold; SHA = expected and found sha256)
    ("label-flipped-within-0-9", _flip_label, _LAB, ["checksum mismatch", "SHA", "genuine MNIST", "--data-dir"]),
    ("label-200", _patch(_LAB, 8 + 17, b"\xc8"), _LAB, ["checksum mismatch", "SHA", "delete the file"]),
    ("pixel-changed", _patch(_IMG, 16 + 400, b"\x01"), _IMG, ["checksum mismatch", "SHA", "SOROBUST_DATA_DIR"]),
    ("labels-truncated", _cut(_LAB, 10007), _LAB, ["is truncated: 10007 bytes, expected 10008", "--data-dir"]),
    ("images-truncated", _cut(_IMG, 5000), _IMG, ["is truncated: 5000 bytes, expected 7840016"]),
    ("header-truncated", _cut(_LAB, 6), _LAB, ["is truncated: 6 bytes, expected 10008"]),
    ("empty-file", _cut(_IMG, 0), _IMG, ["is not an IDX image file", "(empty file)", "expected 00000803"]),
    ("images-padded", _append(_IMG, b"\x00"), _IMG, ["longer than its header says: 7840017 bytes"]),
    ("labels-as-images-magic", _patch(_LAB, 0, b"\x00\x00\x08\x03"), _LAB,
     ["is not an IDX label file", "magic number 00000803, expected 00000801"]),
    ("wrong-count", _patch(_LAB, 4, (9999).to_bytes(4, "big")), _LAB, ["holds labels of shape 9999, expected 10000"]),
    ("wrong-image-dims", _patch(_IMG, 8, (27).to_bytes(4, "big")), _IMG, ["shape 10000x27x28, expected 10000x28x28"]),
]


@pytest.mark.parametrize("case,mutate,name,words", _BAD_DATA, ids=[r[0] for r in _BAD_DATA])
def test_bad_raw_file_one_line(data_dir, tmp_path, no_network, case, mutate, name, words):
    """A corrupted copy of a raw file is refused with one line naming it, what was expected and found, the fix."""
    import hashlib

    raw = _copy_mnist(data_dir, tmp_path)
    mutate(raw)
    with pytest.raises(SorobustError) as ei:
        data.load_tensors("mnist", "test", data_dir=tmp_path)
    msg = str(ei.value)
    assert "\n" not in msg and str(raw / name) in msg, msg
    if "SHA" in words:
        words = [w for w in words if w != "SHA"]
        words += ["expected sha256 " + data.IDX_SHA256["mnist"][name],
                  "found " + hashlib.sha256((raw / name).read_bytes()).hexdigest()]
    for w in words:
        assert w in msg, (w, msg)
    assert no_network == []  # files present: a bad one is reported, never silently re-downloaded


def test_published_md5_comes_from_torchvision():
    """The archive checksums are torchvision's maintained list, not a copy."""
    import torchvision.datasets as tvd

    for key, cls in (("mnist", tvd.MNIST), ("fashion-mnist", tvd.FashionMNIST)):
        md5 = data._published_md5(key)
        assert sorted(md5) == sorted(f + ".gz" for f in data._RAW_FILES)
        assert md5 == {Path(name).name: h for name, h in cls.resources}


def test_pinned_sha256_match_the_shared_copy(data_dir):
    """IDX_SHA256['mnist'] equals the SHA256SUMS kept beside the shared MNIST copy, and that copy's files."""
    import hashlib

    sums = data_dir / "MNIST" / "SHA256SUMS"
    if not sums.is_file():
        pytest.skip("no SHA256SUMS beside the MNIST copy")
    listed = dict(reversed(line.split()) for line in sums.read_text().splitlines() if line.strip())
    assert listed == data.IDX_SHA256["mnist"]
    for name, h in listed.items():
        assert hashlib.sha256((data_dir / "MNIST" / "raw" / name).read_bytes()).hexdigest() == h


def test_mnist_files_are_not_fashion_mnist(data_dir, tmp_path, no_network):
    """Well-formed files of the wrong dataset fail the checksum."""
    raw = _copy_mnist(data_dir, tmp_path, folder="FashionMNIST")
    with pytest.raises(SorobustError) as ei:
        data.load_tensors("fashion-mnist", "test", data_dir=tmp_path)
    msg = str(ei.value)
    assert "\n" not in msg and str(raw / _IMG) in msg and "not Fashion-MNIST" in msg
    assert data.IDX_SHA256["fashion-mnist"][_IMG] in msg


def test_gz_beside_the_file_ties_it_to_the_published_md5(data_dir, tmp_path, monkeypatch, no_network):
    """With ``<file>.gz`` present the file must be the archive's content (the archive's md5 being torchvision's).

    No published archive is at hand, so torchvision's list is pointed at archives made here."""
    import gzip
    import hashlib
    import torchvision.datasets as tvd

    raw = _copy_mnist(data_dir, tmp_path)
    for f in (_IMG, _LAB):
        (raw / f"{f}.gz").write_bytes(gzip.compress((raw / f).read_bytes(), compresslevel=1, mtime=0))
    resources = [(f"{f}.gz", hashlib.md5((raw / f"{f}.gz").read_bytes()).hexdigest()) for f in (_IMG, _LAB)]
    monkeypatch.setattr(tvd.MNIST, "resources", resources)
    monkeypatch.setattr(data, "IDX_SHA256", {"mnist": {}})  # only the archive can vouch for the files
    X, y = data.load_tensors("mnist", "test", data_dir=tmp_path, limit=3)
    assert y.tolist() == [7, 2, 1]
    _flip_label(raw)
    with pytest.raises(SorobustError) as ei:
        data.load_tensors("mnist", "test", data_dir=tmp_path)
    msg = str(ei.value)
    assert "\n" not in msg and str(raw / _LAB) in msg and f"the content of {_LAB}.gz, whose md5 matches" in msg


def test_recompressed_archive_falls_back_to_the_pinned_content_hash(data_dir, tmp_path, no_network):
    """An archive whose MD5 is not torchvision's (recompressed, as Debian ships Fashion-MNIST) vouches for nothing:
    the genuine file beside it loads, a corrupted one is refused against the pinned content hash."""
    import gzip

    raw = _copy_mnist(data_dir, tmp_path)
    for f in (_IMG, _LAB):
        (raw / f"{f}.gz").write_bytes(gzip.compress((raw / f).read_bytes(), compresslevel=9, mtime=1))
    X, y = data.load_tensors("mnist", "test", data_dir=tmp_path, limit=3)
    assert y.tolist() == [7, 2, 1]
    _flip_label(raw)
    with pytest.raises(SorobustError) as ei:
        data.load_tensors("mnist", "test", data_dir=tmp_path)
    msg = str(ei.value)
    assert "\n" not in msg and str(raw / _LAB) in msg and data.IDX_SHA256["mnist"][_LAB] in msg


def test_verification_is_cached_until_the_file_changes(data_dir, tmp_path, monkeypatch):
    """A second load hashes nothing; a file rewritten in place (same size, new mtime) is hashed and caught."""
    import hashlib

    raw = _copy_mnist(data_dir, tmp_path)
    data.load_tensors("mnist", "test", data_dir=tmp_path, limit=1)
    calls = []
    real_new = hashlib.new
    monkeypatch.setattr(hashlib, "new", lambda *a, **k: (calls.append(a[0]), real_new(*a, **k))[1])
    data.load_tensors("mnist", "test", data_dir=tmp_path, limit=1)
    assert calls == []  # same path, size and mtime: not hashed again
    st = (raw / _LAB).stat()
    _flip_label(raw)  # same size; a new mtime
    os.utime(raw / _LAB, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    with pytest.raises(SorobustError, match="checksum mismatch"):
        data.load_tensors("mnist", "test", data_dir=tmp_path, limit=1)
    assert calls == ["sha256"]


def _legacy_cache(root, labels):
    """torchvision's legacy ``processed/`` cache under ``root/MNIST``: zero images with ``labels`` (test split)."""
    proc = root / "MNIST" / "processed"
    proc.mkdir(parents=True)
    torch.save((torch.zeros(len(labels), 28, 28, dtype=torch.uint8), torch.tensor(labels)), proc / "test.pt")
    torch.save((torch.zeros(1, 28, 28, dtype=torch.uint8), torch.zeros(1, dtype=torch.int64)), proc / "training.pt")
    return proc


def test_label_outside_0_9_refused_without_checksum(tmp_path, no_network):
    """The legacy processed/ cache has no published checksum: its labels are range-checked."""
    labels = [3] * 10000
    labels[17] = 200
    proc = _legacy_cache(tmp_path, labels)
    with pytest.raises(SorobustError) as ei:
        data.load_tensors("mnist", "test", data_dir=tmp_path)
    msg = str(ei.value)
    assert "\n" not in msg and str(proc / "test.pt") in msg and "label 200 at index 17 is outside 0-9" in msg


def test_legacy_cache_of_wrong_size_refused(tmp_path, no_network):
    """A legacy cache with too few points is refused, not used."""
    _legacy_cache(tmp_path, [3] * 10)
    with pytest.raises(SorobustError) as ei:
        data.load_tensors("mnist", "test", data_dir=tmp_path)
    assert "\n" not in str(ei.value) and "expected uint8 (10000, 28, 28) and (10000,)" in str(ei.value)


def test_verified_raw_files_win_over_a_legacy_cache(data_dir, tmp_path):
    """torchvision would read processed/ before raw/; the verified raw files must be what is loaded."""
    _copy_mnist(data_dir, tmp_path)
    _legacy_cache(tmp_path, [5] * 10000)
    X, y = data.load_tensors("mnist", "test", data_dir=tmp_path, limit=3)
    assert y.tolist() == [7, 2, 1] and float(X.max()) == 1.0
