"""Shared fixtures: the MNIST directory, and float64 / single-thread settings for the small-tensor tests.

Small tensors gain nothing from intra-op threads, and on a busy 2-core machine torch's worker threads stall
badly, so the numerical tests run single-threaded.
"""

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """$SOROBUST_DATA_DIR, else ../shared/data beside the repository (where CI puts MNIST)."""
    return Path(os.environ.get("SOROBUST_DATA_DIR", str(REPO.parent / "shared" / "data")))


@pytest.fixture(scope="module")
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def float64_single_thread(one_thread):
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def wrong_classes(y: torch.Tensor, n: int) -> torch.Tensor:
    """(B, n − 1): every class but the label, in increasing order (the ``all`` target protocol), built by hand."""
    B = y.shape[0]
    allc = torch.arange(n).expand(B, n)
    return allc[allc != y.reshape(B, 1)].reshape(B, n - 1)
