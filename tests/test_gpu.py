"""Checks that need CUDA (marker ``gpu``; CI excludes it, run with ``-m gpu`` on a GPU machine).

Soundness on every device: a certificate computed on the GPU, in float32 and in float64, is a lower bound on the
distance to any other class, proved by the independent float64 all-class PGD of ``tests/test_soundness_dtype.py``
run on the CPU; and the GPU's certificates agree with the CPU's to rounding. The same for the CROWN radii and for
the second-order attack's float64 verdicts.
"""

import copy

import pytest
import torch

from sorobust import attacks
from sorobust.certify import crc
from sorobust.certify.crown import certified_radius

from test_soundness_dtype import _pgd_violations, trained_nets  # noqa: F401  (the fixture)

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def cuda():
    if not torch.cuda.is_available():
        pytest.fail("marker gpu: these checks need a CUDA device (run them with -m gpu on a GPU machine)")
    return torch.device("cuda")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_crc_on_the_gpu_is_sound_and_agrees_with_the_cpu(trained_nets, cuda, dtype):  # noqa: F811
    nets, X, y = trained_nets
    base = nets[2]
    gpu_model = copy.deepcopy(base).to(cuda, dtype)
    res = crc(gpu_model, X.to(cuda, dtype), y.to(cuda), targets="all")
    cert = res.certificate.to("cpu", torch.float64)
    correct = (gpu_model(X.to(cuda, dtype)).argmax(1) == y.to(cuda)).cpu()
    assert (cert > 0).sum() > 150
    model64 = copy.deepcopy(base).to(torch.float64)
    radius = torch.where(correct, cert * (1 - 1e-6), torch.zeros_like(cert))
    bad = _pgd_violations(model64, X.to(torch.float64), y, radius)
    assert bad.numel() == 0, f"{bad.numel()} GPU {dtype} certificates broken: {bad.tolist()}"
    cpu = crc(copy.deepcopy(base).to(dtype), X.to(dtype), y, targets="all").certificate.to(torch.float64)
    tol = 1e-3 if dtype == torch.float32 else 1e-8
    assert torch.allclose(cert, cpu, rtol=tol, atol=tol)


def test_crown_radii_on_the_gpu_are_sound(trained_nets, cuda):  # noqa: F811
    nets, X, y = trained_nets
    model = copy.deepcopy(nets[2]).to(cuda, torch.float32)
    r = certified_radius(model, X.to(cuda), y.to(cuda), targets="all", method="crown")["radius"]
    r64 = r.to("cpu", torch.float64)
    correct = (model(X.to(cuda)).argmax(1) == y.to(cuda)).cpu()
    model64 = copy.deepcopy(nets[2]).to(torch.float64)
    bad = _pgd_violations(model64, X.to(torch.float64), y, torch.where(correct, r64, torch.zeros_like(r64)))
    assert bad.numel() == 0, f"{bad.numel()} GPU CROWN radii broken: {bad.tolist()}"


def test_attack_verdicts_on_the_gpu_are_float64_facts(trained_nets, cuda):  # noqa: F811
    nets, X, y = trained_nets
    model = copy.deepcopy(nets[2]).to(cuda, torch.float32)
    ref64 = copy.deepcopy(nets[2]).to(torch.float64)
    for r in (attacks.pgd_l2(model, X.to(cuda), y.to(cuda), 1.0, targets="all"),
              attacks.second_order(model, X.to(cuda), y.to(cuda), 1.0)):
        xa = r.x_adv.to("cpu", torch.float64)
        with torch.no_grad():
            pred = ref64(xa).argmax(1)
        assert torch.equal(r.pred.cpu(), pred) and torch.equal(r.robust.cpu(), pred == y)
