"""Dataset loading: MNIST and Fashion-MNIST as tensors, from disk, with no surprises.

Data directory
    Resolved by :func:`resolve_data_dir`: an explicit argument (the CLI's ``--data-dir``) wins, then the
    environment variable ``SOROBUST_DATA_DIR``, then ``./data`` (relative to the current directory).

On-disk layout (torchvision's)
    ``<data_dir>/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte`` for MNIST and
    ``<data_dir>/FashionMNIST/raw/...`` (same four file names) for Fashion-MNIST. The files are the
    uncompressed IDX files. When all four are present they are read directly and no network access is
    attempted at all. Fashion-MNIST from another source (for example Debian's ``dataset-fashion-mnist``
    package) is used by copying or symlinking its four IDX files, uncompressed and under the names above, into
    ``<data_dir>/FashionMNIST/raw/``; no other layout is searched.

Missing data
    If the files are missing and ``download=True``, torchvision's downloader is tried. If that fails (e.g. the
    machine is offline) every file and directory the attempt created is removed again, so that a later run
    does not mistake a half-written file for data, and a one-line :class:`~sorobust.errors.SorobustError` is
    raised that names the directory looked in and says to pass ``--data-dir`` or set ``SOROBUST_DATA_DIR``.

Verification
    Before a split is read, its two raw files (images and labels) are checked, and any mismatch stops the run
    with one line naming the file, the expected and the found value, and the fix (delete the file so that it is
    downloaded again, or point ``--data-dir`` / ``SOROBUST_DATA_DIR`` at a good copy):

    1. *Structure*, from the 16-byte header alone: the IDX magic number (unsigned bytes, 3 dimensions for
       images, 1 for labels), the item count (60 000 train, 10 000 test), 28×28 images, and a file size equal
       to header + data (a truncated or padded file is named as such).
    2. *Checksum.* The published checksums are torchvision's MD5s of the ``.gz`` archives
       (``torchvision.datasets.MNIST.resources`` / ``FashionMNIST.resources``, read at run time, not copied).
       torchvision reads the *uncompressed* files, which no maintained source lists a hash for, so:

       * if ``<file>.gz`` sits beside the file (torchvision's downloader leaves it there), the archive's MD5
         must equal torchvision's, and the file's SHA-256 must equal that of the archive's decompressed
         content; the chain ties the file read to the published checksum;
       * otherwise (no archive, or an archive whose MD5 differs, e.g. recompressed by a distribution) the
         file's SHA-256 must equal the value pinned in :data:`IDX_SHA256`: the SHA-256 of the decompressed
         published archives. The MNIST values equal those of our copy (``../shared/data/MNIST/SHA256SUMS``,
         checked by ``tests/test_data.py``) and those pinned by several independent public projects; the
         Fashion-MNIST values agree across several independent public projects and with the decompressed files
         of Debian's ``dataset-fashion-mnist`` (checked 2026-12-02; Debian recompressed the archives, so their
         MD5s differ from torchvision's while their content is the published one).

       Either way a single changed byte anywhere (a label flipped to another digit included) is caught.
    3. *Labels.* After loading, every label must lie in 0–9. With the checksums this is redundant for raw
       files, but it also covers data read from torchvision's legacy ``processed/`` cache, which has no
       published checksum (that cache is used only when the raw files are absent; its tensors are also checked
       for dtype uint8, shape (N, 28, 28) and the split's N).

    Hashing costs ~0.1 s for the 47 MB training images; digests are cached in-process per (path, device, inode,
    size, mtime), so repeated loads in one process hash each file once. A changed file (new size or mtime) is
    hashed again.

Pixels
    Images are ``float32`` in ``[0, 1]`` (raw bytes / 255, exactly what ``transforms.ToTensor()`` gives), with
    **no** mean/std normalisation: the certified radii are in this pixel scale.
"""

from __future__ import annotations

import gzip
import hashlib
import math
import operator
import os
import shutil
import struct
from pathlib import Path
from typing import Optional, Union

import torch
from torch.utils.data import DataLoader, TensorDataset

from sorobust import vocab
from sorobust.errors import SorobustError

PathLike = Union[str, os.PathLike]

#: Names accepted by :func:`load_dataset` (``_`` and upper case are also accepted, e.g. ``fashion_mnist``).
DATASETS = vocab.values(vocab.Dataset)

#: Splits accepted by :func:`load_dataset`.
SPLITS = vocab.values(vocab.Split)

ENV_VAR = "SOROBUST_DATA_DIR"

#: torchvision sub-directory (class name) of each dataset under the data dir.
_FOLDERS = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}

_RAW_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)

#: Display name of each dataset in messages.
_LABELS = {"mnist": "MNIST", "fashion-mnist": "Fashion-MNIST"}

#: Points per split (both datasets): the item count every raw file's header must hold.
_COUNTS = {"train": 60000, "test": 10000}

#: SHA-256 of the uncompressed IDX files, i.e. of the decompressed archives whose MD5 torchvision publishes.
#: Used when the ``.gz`` archive is not beside the file (see the module docstring, Verification).
IDX_SHA256 = {
    "mnist": {
        "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
        "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
        "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
        "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
    },
    "fashion-mnist": {
        "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
        "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
        "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
        "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
    },
}

#: In-process digest cache: (path, device, inode, size, mtime_ns, algorithm, decompressed) -> hex digest.
_DIGESTS: dict = {}


def resolve_data_dir(data_dir: Optional[PathLike] = None) -> Path:
    """Return the data root directory.

    Args:
        data_dir: Explicit directory (e.g. from ``--data-dir``). Takes precedence when not ``None`` / empty.

    Returns:
        ``Path(data_dir)`` if given, else ``Path($SOROBUST_DATA_DIR)`` if that variable is set and non-empty,
        else ``Path("data")`` (relative to the current working directory). ``~`` is expanded; the path is
        not required to exist.
    """
    if data_dir is not None and str(data_dir) != "":
        return Path(data_dir).expanduser()
    env = os.environ.get(ENV_VAR, "")
    if env:
        return Path(env).expanduser()
    return Path("data")


def _canonical_name(name: str) -> str:
    key = str(name).strip().lower().replace("_", "-")
    if key == "fashionmnist":
        key = "fashion-mnist"
    if key not in DATASETS:
        raise SorobustError(f"unknown dataset {name!r}; valid names are: {', '.join(DATASETS)}")
    return key


def _check_split(split: str) -> str:
    if split not in SPLITS:
        raise SorobustError(f"unknown split {split!r}; valid splits are: {', '.join(SPLITS)}")
    return split


def _torchvision_class(key: str):
    from torchvision import datasets

    return datasets.MNIST if key == "mnist" else datasets.FashionMNIST


def _snapshot(root: Path) -> set:
    """All paths (files and directories) that currently exist at or under ``root``."""
    seen = set()
    if root.exists() or root.is_symlink():
        seen.add(str(root))
    if root.is_dir():
        for dirpath, dirnames, filenames in os.walk(root):
            for n in dirnames + filenames:
                seen.add(os.path.join(dirpath, n))
    return seen


def _remove_new(root: Path, before: set) -> None:
    """Remove every file/directory at or under ``root`` that is not in ``before`` (best effort)."""
    if root.is_dir():
        # bottom-up so that directories are empty when we reach them
        for dirpath, dirnames, filenames in os.walk(root, topdown=False):
            for n in filenames:
                p = os.path.join(dirpath, n)
                if p not in before:
                    try:
                        os.unlink(p)
                    except OSError:
                        pass
            for n in dirnames:
                p = os.path.join(dirpath, n)
                if p not in before:
                    if os.path.islink(p):
                        try:
                            os.unlink(p)
                        except OSError:
                            pass
                    else:
                        shutil.rmtree(p, ignore_errors=True)
    if str(root) not in before and root.is_dir():
        try:
            root.rmdir()  # only if empty
        except OSError:
            pass


def _missing_message(key: str, raw_dir: Path, reason: str = "") -> str:
    files = ", ".join(_RAW_FILES)
    msg = f"{key} data not found in {raw_dir} (expected {files})"
    if reason:
        msg += f"; {reason}"
    msg += (
        f"; pass --data-dir DIR or set {ENV_VAR}=DIR to a directory containing "
        f"{_FOLDERS[key]}/raw/ with these files"
    )
    return msg


def _fix(key: str) -> str:
    """The fix offered by every verification error: remove the bad file, or use another copy."""
    return (f"delete the file and run again to download a fresh copy, or pass --data-dir DIR or set {ENV_VAR}=DIR "
            f"to a directory holding a good {_FOLDERS[key]}/raw/")


def _published_md5(key: str) -> dict:
    """torchvision's published MD5 of each ``.gz`` archive of dataset ``key``, by archive file name."""
    return {os.path.basename(name): md5 for name, md5 in _torchvision_class(key).resources}


def _digest(path: Path, algorithm: str, decompress: bool = False) -> str:
    """Hex digest (``"md5"`` or ``"sha256"``) of the file at ``path``, or of its gzip-decompressed content.

    Cached in :data:`_DIGESTS` per (resolved path, device, inode, size, mtime), so a file is hashed once per
    process unless it changes.
    """
    st = path.stat()
    key = (str(path.resolve()), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, algorithm, decompress)
    digest = _DIGESTS.get(key)
    if digest is None:
        h = hashlib.new(algorithm, usedforsecurity=False)
        with (gzip.open if decompress else open)(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        digest = _DIGESTS[key] = h.hexdigest()
    return digest


def _check_idx_header(path: Path, key: str, n: int, images: bool) -> None:
    """Check an IDX file's header and size without reading its data.

    The magic number must say unsigned bytes with 3 dimensions (images) or 1 (labels), the dimensions must be
    ``(n, 28, 28)`` or ``(n,)``, and the size exactly header + data. Raises a one-line SorobustError otherwise.
    """
    ndim = 3 if images else 1
    dims = (n, 28, 28) if images else (n,)
    what = "image" if images else "label"
    header = 4 + 4 * ndim
    want_size = header + math.prod(dims)
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(header)
    magic = bytes((0, 0, 8, ndim))
    if head[:4] != magic:
        raise SorobustError(f"{path} is not an IDX {what} file: magic number {head[:4].hex() or '(empty file)'}, "
                            f"expected {magic.hex()}; {_fix(key)}")
    if len(head) < header:
        raise SorobustError(f"{path} is truncated: {size} bytes, expected {want_size}; {_fix(key)}")
    got = struct.unpack(f">{ndim}i", head[4:])
    if got != dims:
        raise SorobustError(f"{path} holds {what}s of shape {'x'.join(map(str, got))}, expected "
                            f"{'x'.join(map(str, dims))}; {_fix(key)}")
    if size != want_size:
        state = "truncated" if size < want_size else "longer than its header says"
        raise SorobustError(f"{path} is {state}: {size} bytes, expected {want_size}; {_fix(key)}")


def _verify_raw(key: str, raw: Path, split: str) -> None:
    """Check the two raw files of ``split`` (structure, then checksum; see the module docstring, Verification).

    Raises:
        SorobustError: One line naming the file, the expected and found value, and the fix.
    """
    prefix = "train" if split == "train" else "t10k"
    md5s = _published_md5(key)
    for images in (True, False):
        name = f"{prefix}-images-idx3-ubyte" if images else f"{prefix}-labels-idx1-ubyte"
        path = raw / name
        _check_idx_header(path, key, _COUNTS[split], images)
        gz = raw / f"{name}.gz"
        if gz.is_file() and gz.name in md5s and _digest(gz, "md5") == md5s[gz.name]:
            want, source = _digest(gz, "sha256", decompress=True), f"the content of {gz.name}, whose md5 matches"
        else:  # no archive, or one recompressed by a distribution (Debian's): the pinned content hash decides
            want, source = IDX_SHA256[key][name], f"genuine {_LABELS[key]}"
        found = _digest(path, "sha256")
        if found != want:
            raise SorobustError(f"checksum mismatch for {path}: expected sha256 {want} ({source}), found {found}; "
                                f"the file is corrupt or not {_LABELS[key]}: {_fix(key)}")


def _check_loaded(ds, key: str, split: str, source: Path, labels_file: Path) -> None:
    """Check the tensors torchvision loaded: uint8 images (N, 28, 28), N labels in 0..9, N the split's size.

    ``source`` (the directory read) and ``labels_file`` name the data in the one-line error.
    """
    data, targets = ds.data, torch.as_tensor(ds.targets)
    n = _COUNTS[split]
    if data.dtype != torch.uint8 or tuple(data.shape) != (n, 28, 28) or tuple(targets.shape) != (n,):
        raise SorobustError(f"{key} {split} data in {source} has images {data.dtype} {tuple(data.shape)} and labels "
                            f"{tuple(targets.shape)}, expected uint8 ({n}, 28, 28) and ({n},); {_fix(key)}")
    bad = (targets < 0) | (targets > 9)
    if bool(bad.any()):
        i = int(bad.nonzero()[0, 0])
        raise SorobustError(f"{labels_file}: label {int(targets[i])} at index {i} is outside 0-9 "
                            f"({int(bad.sum())} such labels); the labels are corrupt: {_fix(key)}")


def _summary(exc: BaseException, limit: int = 240) -> str:
    """One short line describing ``exc``: its type, first and last message lines (torchvision's download
    errors are multi-line: the file, then one block per mirror)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    text = type(exc).__name__
    if lines:
        text += ": " + lines[0]
        if len(lines) > 1:
            text += " ... " + lines[-1]
    return text if len(text) <= limit else text[: limit - 3] + "..."


def load_dataset(name: str, split: str = "test", data_dir: Optional[PathLike] = None, download: bool = True):
    """Load a dataset as a torchvision dataset.

    Args:
        name: One of :data:`DATASETS` (``"mnist"`` or ``"fashion-mnist"``).
        split: ``"test"`` (10 000 points) or ``"train"`` (60 000 points).
        data_dir: Data root; see :func:`resolve_data_dir`. Files are expected in torchvision's layout
            ``<data_dir>/MNIST/raw/`` or ``<data_dir>/FashionMNIST/raw/``.
        download: Whether to try torchvision's download when the files are missing. Ignored (no network
            access) when they are present.

    Returns:
        ``torchvision.datasets.MNIST`` or ``FashionMNIST`` with ``transform=transforms.ToTensor()``: items are
        ``(image, label)`` with ``image`` a float32 tensor of shape ``(1, 28, 28)`` in ``[0, 1]`` and
        ``label`` an int. ``.data`` is the uint8 tensor ``(N, 28, 28)``, ``.targets`` the int64 tensor ``(N,)``.

    Raises:
        SorobustError: Unknown name or split; data missing and (download disabled or the download failed);
            raw files present but unreadable, malformed, truncated or not matching the published checksums;
            labels outside 0–9 (see the module docstring, Verification).
    """
    key = _canonical_name(name)
    _check_split(split)
    from torchvision import transforms

    cls = _torchvision_class(key)
    root = resolve_data_dir(data_dir)
    raw_dir = root / _FOLDERS[key] / "raw"
    train = split == "train"

    def construct(dl: bool):
        return cls(str(root), train=train, transform=transforms.ToTensor(), download=dl)

    prefix = "train" if train else "t10k"
    labels_file = raw_dir / f"{prefix}-labels-idx1-ubyte"
    processed = root / _FOLDERS[key] / "processed"
    present = all((raw_dir / f).is_file() for f in _RAW_FILES)
    if not present:
        # torchvision also accepts its legacy processed/ cache; try that quietly without the network.
        try:
            ds = construct(False)
        except Exception:
            ds = None
        if ds is not None:  # no published checksum for that cache: check what it holds
            _check_loaded(ds, key, split, processed, processed / (cls.training_file if train else cls.test_file))
            return ds
        if not download:
            raise SorobustError(_missing_message(key, raw_dir, "download disabled"))
        before = _snapshot(root)
        try:
            ds = construct(True)
        except BaseException as exc:  # noqa: BLE001 - clean up even on KeyboardInterrupt
            _remove_new(root, before)
            if not isinstance(exc, Exception):
                raise
            reason = f"download failed ({_summary(exc)})"
            raise SorobustError(_missing_message(key, raw_dir, reason)) from exc
        _verify_raw(key, raw_dir, split)  # the downloaded files, like any others
        _check_loaded(ds, key, split, raw_dir, labels_file)
        return ds
    _verify_raw(key, raw_dir, split)
    if all((processed / f).is_file() for f in (cls.training_file, cls.test_file)):
        # torchvision prefers a legacy processed/ cache to the raw files: make it read the verified raw files
        # (same class name, so the same folders; tests/test_data.py checks that the raw files win)
        cls = type(cls.__name__, (cls,), {"_check_legacy_exist": lambda self: False, "__doc__": cls.__doc__})
    try:
        ds = construct(False)
    except Exception as exc:
        raise SorobustError(
            f"could not read {key} {split} data from {raw_dir} ({_summary(exc)}); the files may be "
            f"truncated or corrupt: replace them, or pass --data-dir DIR or set {ENV_VAR}=DIR to another copy"
        ) from exc
    _check_loaded(ds, key, split, raw_dir, labels_file)
    return ds


def load_tensors(
    name: str,
    split: str = "test",
    data_dir: Optional[PathLike] = None,
    limit: Optional[int] = None,
    download: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Load a split as in-memory tensors.

    Args:
        name: One of :data:`DATASETS`.
        split: ``"test"`` or ``"train"``.
        data_dir: Data root; see :func:`resolve_data_dir`.
        limit: If not ``None``, keep only the first ``limit`` points in the split's file order
            (deterministic). A limit larger than the split returns the whole split. Must be ``>= 0``.
        download: See :func:`load_dataset`.

    Returns:
        ``(X, y)``: ``X`` float32 of shape ``(N, 1, 28, 28)`` with values in ``[0, 1]`` (bytes / 255,
        bit-identical to ``ToTensor()``, no normalisation), ``y`` int64 of shape ``(N,)`` with labels 0..9.
        Both are contiguous CPU tensors that own their memory.

    Raises:
        SorobustError: As :func:`load_dataset`, or a negative / non-integer ``limit``.
    """
    if limit is not None:
        try:
            if isinstance(limit, bool):
                raise TypeError
            limit = operator.index(limit)
        except TypeError:
            raise SorobustError(f"limit must be a non-negative integer, got {limit!r}") from None
        if limit < 0:
            raise SorobustError(f"limit must be a non-negative integer, got {limit!r}")
    ds = load_dataset(name, split=split, data_dir=data_dir, download=download)
    data, targets = ds.data, ds.targets
    if limit is not None:
        data, targets = data[:limit], targets[:limit]
    X = data.unsqueeze(1).to(torch.float32).div(255).contiguous()
    y = torch.as_tensor(targets).to(torch.int64).clone()
    return X, y


def loader(
    name: str,
    split: str,
    batch_size: int,
    shuffle: bool,
    seed: int,
    data_dir: Optional[PathLike] = None,
    limit: Optional[int] = None,
) -> DataLoader:
    """A deterministic ``DataLoader`` over :func:`load_tensors` output.

    Args:
        name: One of :data:`DATASETS`.
        split: ``"test"`` or ``"train"``.
        batch_size: Points per batch (the last batch may be smaller).
        shuffle: Reshuffle every epoch. The order depends only on ``seed`` (a dedicated
            ``torch.Generator``), not on the global RNG state.
        seed: Seed of the shuffling generator (unused when ``shuffle`` is false).
        data_dir: Data root; see :func:`resolve_data_dir`.
        limit: First ``limit`` points only (taken before shuffling).

    Returns:
        A ``DataLoader`` (single process) yielding ``(X, y)`` batches: float32 ``(B, 1, 28, 28)`` in
        ``[0, 1]`` and int64 ``(B,)``.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise SorobustError(f"batch_size must be a positive integer, got {batch_size!r}")
    X, y = load_tensors(name, split=split, data_dir=data_dir, limit=limit)
    generator = None
    if shuffle:
        generator = torch.Generator()
        generator.manual_seed(int(seed))
    return DataLoader(
        TensorDataset(X, y), batch_size=batch_size, shuffle=bool(shuffle), generator=generator, num_workers=0
    )


def raw_dir(name: str, data_dir: Optional[PathLike] = None) -> Path:
    """The directory holding the raw files of dataset ``name`` (for provenance hashes)."""
    return resolve_data_dir(data_dir) / _FOLDERS[_canonical_name(name)] / "raw"
