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
