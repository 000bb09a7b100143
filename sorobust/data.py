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

Pixels
    Images are ``float32`` in ``[0, 1]`` (raw bytes / 255, exactly what ``transforms.ToTensor()`` gives), with
    **no** mean/std normalisation: the certified radii are in this pixel scale.
"""

from __future__ import annotations

import operator
import os
import shutil
from pathlib import Path
from typing import Optional, Union

import torch
from torch.utils.data import DataLoader, TensorDataset

from sorobust.errors import SorobustError

PathLike = Union[str, os.PathLike]

#: Names accepted by :func:`load_dataset` (``_`` and upper case are also accepted, e.g. ``fashion_mnist``).
DATASETS = ("mnist", "fashion-mnist")

#: Splits accepted by :func:`load_dataset`.
SPLITS = ("train", "test")

ENV_VAR = "SOROBUST_DATA_DIR"

#: torchvision sub-directory (class name) of each dataset under the data dir.
_FOLDERS = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}

_RAW_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


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
            raw files present but unreadable.
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

    present = all((raw_dir / f).is_file() for f in _RAW_FILES)
    if not present:
        # torchvision also accepts its legacy processed/ cache; try that quietly without the network.
        try:
            return construct(False)
        except Exception:
            pass
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
        return ds
    try:
        return construct(False)
    except Exception as exc:
        raise SorobustError(
            f"could not read {key} {split} data from {raw_dir} ({_summary(exc)}); the files may be "
            f"truncated or corrupt: replace them, or pass --data-dir DIR or set {ENV_VAR}=DIR to another copy"
        ) from exc


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
