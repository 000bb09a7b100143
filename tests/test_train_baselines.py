"""Certified-training baselines: CROWN-IBP (Zhang et al. 2020) and COAP (Wong & Kolter 2018) objectives and
schedules, checked against independent formulas, autograd and the bounds they are built from."""

import math

import pytest
import torch
import torch.nn.functional as F

from sorobust import data, models
from sorobust.certify import crown
from sorobust.errors import SorobustError
from sorobust.train import TrainConfig, Trainer, _crown_ibp_loss

pytestmark = pytest.mark.usefixtures("one_thread")
DT = torch.float64


@pytest.fixture
def data_dir():
    from sorobust.data import resolve_data_dir

    return resolve_data_dir(None)


def _net(act, depth=3, width=9, in_dim=12, n_classes=5, seed=0):
    torch.manual_seed(seed)
    m = models.MLP(depth, width, act, in_dim=in_dim, n_classes=n_classes).to(DT)
    x = torch.rand(6, in_dim, dtype=DT)
    with torch.no_grad():
        y = m(x).argmax(1)
    return m, x, y


# ----------------------------------------------------------------------------------------- schedules


def test_method_defaults_are_the_original_papers():
    c = TrainConfig(arch="mlp-2x16-relu", method="crown-ibp")
    assert (c.epochs, c.batch_size, c.lr, c.schedule_start, c.schedule_length) == (100, 256, 5e-4, 1, 61)
    c = TrainConfig(arch="mlp-2x16-relu", method="coap")
    assert (c.epochs, c.batch_size, c.lr, c.schedule_length, c.starting_epsilon, c.proj) == (60, 50, 1e-3, 20,
                                                                                           0.01, 50)
    c = TrainConfig(arch="mlp-2x16-softplus", method="crt")
    assert (c.epochs, c.batch_size, c.lr, c.lr_decay_step) == (30, 64, 1e-3, 0)
    assert all(c.lr_at(e) == 1e-3 for e in range(40))
    c = TrainConfig(arch="mlp-2x16-relu", method="crown-ibp", epochs=5, lr=0.1)
    assert c.epochs == 5 and c.lr == 0.1  # explicit values win


def test_crown_ibp_schedule_matches_the_original_loop():
    """CROWN-IBP's train.py: for t in range(epochs), eps ramps linearly inside epoch t from
    (t − start)·ρ/length to (t − start + 1)·ρ/length (clipped to [0, ρ]); lr StepLR(10, 0.5) stepped at
    max(t − (start + length − 1) + 1, 0)."""
    c = TrainConfig(arch="mlp-2x16-relu", method="crown-ibp", rho=1.58)
    nb = 7
    for t in [0, 1, 2, 30, 61, 62, 70, 99]:
        start = min(max((t - 1) * 1.58 / 61, 0), 1.58)
        end = min(max((t - 1 + 1) * 1.58 / 61, 0), 1.58)
        for b in range(nb):
            assert c.eps_at(t, b, nb) == pytest.approx(start + (end - start) * b / nb, abs=1e-12)
        step_epoch = max(t - (1 + 61 - 1) + 1, 0)
        assert c.lr_at(t) == pytest.approx(5e-4 * 0.5 ** (step_epoch // 10))


def test_coap_schedule_matches_convex_adversarial_examples():
    """examples/mnist.py: eps_schedule = linspace(starting_epsilon, epsilon, schedule_length), one per epoch,
    then ε; lr halves every 10 epochs after the schedule."""
    c = TrainConfig(arch="mlp-2x16-relu", method="coap", rho=1.58)
    sched = torch.linspace(0.01, 1.58, 20, dtype=DT)
    for t in range(60):
        want = float(sched[t]) if t < 20 else 1.58
        assert c.eps_at(t, 3, 10) == pytest.approx(want, abs=1e-12)


def test_bad_baseline_configs_stop_with_one_line():
    with pytest.raises(SorobustError, match="relu"):
        TrainConfig(arch="mlp-2x16-softplus", method="coap").validate()
    with pytest.raises(SorobustError, match="final"):
        TrainConfig(arch="mlp-2x16-relu", method="crown-ibp", final_kappa=1.5).validate()


# ----------------------------------------------------------------------------------------- CROWN-IBP loss


@pytest.mark.parametrize("act", ["relu", "softplus"])
def test_crown_ibp_loss_at_zero_eps_is_cross_entropy(act):
    """At ε = 0 every bound is the margin itself, and CE over [0, −(z_y − z_j)] is CE(z, y)."""
    m, x, y = _net(act)
    cfg = TrainConfig(arch="mlp-2x16-relu", method="crown-ibp", rho=1.0)
    y = torch.arange(6) % 5  # include misclassified points
    logits = m(x)
    loss, ce, stats = _crown_ibp_loss(m, x, y, logits, 0.0, cfg)
    torch.testing.assert_close(loss, F.cross_entropy(logits, y), rtol=0, atol=1e-10)
    assert stats["kappa"] == 1.0 and stats["beta"] == 1.0


@pytest.mark.parametrize("act", ["relu", "softplus"])
def test_crown_ibp_loss_mixes_bounds_and_is_differentiable(act):
    m, x, y = _net(act)
    cfg = TrainConfig(arch="mlp-2x16-relu", method="crown-ibp", rho=0.2, final_beta=0.0, final_kappa=0.5)
    eps = 0.1  # halfway: β = κ = 0.75 (β: 1 → 0, κ: 1 → 0.5)
    logits = m(x)
    loss, _, stats = _crown_ibp_loss(m, x, y, logits, eps, cfg)
    assert stats["beta"] == pytest.approx(0.5) and stats["kappa"] == pytest.approx(0.75)
    with torch.no_grad():
        lb = 0.5 * crown.margin_bounds(m, x, y, eps, method="crown-ibp") + 0.5 * crown.margin_bounds(
            m, x, y, eps, method="ibp")
        # robust CE by hand: log(1 + Σ_j exp(−m̲_j))
        robust = torch.log1p(torch.exp(-lb).sum(1)).mean()
        want = 0.75 * F.cross_entropy(logits, y) + 0.25 * robust
    torch.testing.assert_close(loss.detach(), want, rtol=0, atol=1e-10)
    grads = torch.autograd.grad(loss, list(m.parameters()))
    assert all(torch.isfinite(g).all() for g in grads) and sum(g.abs().sum() for g in grads) > 0


@pytest.mark.parametrize("act", ["relu", "softplus"])
@pytest.mark.parametrize("method", ["ibp", "crown-ibp", "crown"])
def test_margin_bound_gradients_match_finite_differences(act, method):
    """The bounds are differentiable almost everywhere; autograd equals central differences in float64."""
    m, x, y = _net(act, depth=3, width=5, in_dim=6, n_classes=3, seed=2)
    base = crown.margin_bounds(m, x, y, 0.3, method=method).sum()
    grads = torch.autograd.grad(base, list(m.parameters()))
    h = 1e-6
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p, g in zip(m.parameters(), grads):
            for _ in range(3):
                i = int(torch.randint(p.numel(), (1,), generator=gen))
                old = p.view(-1)[i].item()
                p.view(-1)[i] = old + h
                up = crown.margin_bounds(m, x, y, 0.3, method=method).sum().item()
                p.view(-1)[i] = old - h
                dn = crown.margin_bounds(m, x, y, 0.3, method=method).sum().item()
                p.view(-1)[i] = old
                fd = (up - dn) / (2 * h)
                assert math.isclose(g.view(-1)[i].item(), fd, rel_tol=1e-4, abs_tol=1e-6), (p.shape, i, fd)


def test_crown_ibp_training_raises_verified_accuracy(data_dir):
    """Two short epochs on 1000 MNIST images: CROWN-IBP training at ρ = 1 gives more IBP-verified points than
    standard training of the same net (which verifies none at this radius)."""
    Xte, yte = data.load_tensors("mnist", "test", data_dir=data_dir, limit=300)
    verified = {}
    for method in ("standard", "crown-ibp"):
        cfg = TrainConfig(arch="mlp-2x64-relu", method=method, rho=1.0, epochs=3, limit=1000, batch_size=50,
                          lr=1e-3, schedule_start=0, schedule_length=2, seed=4)
        model, hist = Trainer(cfg, data_dir=data_dir, progress=False).fit()
        with torch.no_grad():
            lb = crown.margin_bounds(model, Xte, yte, 1.0, method="ibp")
        verified[method] = (lb.min(1).values > 0).float().mean().item()
        if method == "crown-ibp":
            assert hist[-1]["eps"] == pytest.approx(1.0) and hist[0]["eps"] < 0.5
    assert verified["crown-ibp"] > verified["standard"] + 0.05, verified


# ------------------------------------------------------------------------------------------------------ COAP


def test_coap_training_lowers_the_exact_robust_loss_and_is_reproducible(data_dir):
    """Four short epochs of COAP training (random projections, ε ramped over three epochs) lower the *exact* dual
    robust loss on held-out points, relative to the same net trained with plain cross-entropy; the same seed
    gives the same weights."""
    from sorobust.certify import coap

    Xte, yte = data.load_tensors("mnist", "test", data_dir=data_dir, limit=200)
    Xte = Xte.flatten(1)
    runs = {}
    for method in ("standard", "coap", "coap-again"):
        cfg = TrainConfig(arch="mlp-2x32-relu", method=method.split("-")[0], rho=0.5, epochs=4, limit=1000,
                          batch_size=50, lr=3e-3, schedule_length=3, proj=20, seed=5)
        model, hist = Trainer(cfg, data_dir=data_dir, progress=False).fit()
        runs[method] = model
        if method.startswith("coap"):
            assert [h["eps"] for h in hist] == pytest.approx([0.01, 0.255, 0.5, 0.5]) and "robust_err" in hist[0]
    for a, b in zip(runs["coap"].parameters(), runs["coap-again"].parameters()):
        assert torch.equal(a, b)
    with torch.no_grad():
        exact = {m: coap.robust_loss(runs[m], Xte, yte, 0.5, norm_type="l2")[0].item() for m in ("standard", "coap")}
    assert exact["coap"] < exact["standard"], exact
