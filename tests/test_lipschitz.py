"""Tests for sorobust.certify.lipschitz (the global Lipschitz certificate) and sorobust.lipnet (deel-torchlip).

Oracles, independent of the code under test:

* gradient norms ‖∇ₓ(z_y − z_t)‖ by autograd at random points and after gradient ascent on the gradient norm (a
  lower bound on the true Lipschitz constant, which L_{y,t} must dominate);
* the product formula recomputed here from layer Jacobians (autograd's jacobian of each layer, so the unrolled
  convolutions do not come from AffineOp.dense) and numpy-free torch SVDs;
* the closed-form distance to the decision boundary of a linear classifier, and points placed just inside and
  just outside it;
* a PGD-ℓ2 attack written here (float64, projected onto each point's certified ball).

Everything runs in float64 on one thread, except the float32-versus-float64 comparison.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn as nn

from sorobust import models
from sorobust.certify import lipschitz
from sorobust.certify.crc import runner_up

DT = torch.float64

pytestmark = pytest.mark.usefixtures("float64_single_thread")


# ----------------------------------------------------------------------------------------------------------------
# networks
# ----------------------------------------------------------------------------------------------------------------


def _seq(widths, act):
    mods = []
    for k, (i, o) in enumerate(zip(widths[:-1], widths[1:])):
        if k:
            mods.append(act() if callable(act) and not isinstance(act, nn.Module) else act)
        mods.append(nn.Linear(i, o))
    return nn.Sequential(*mods)


def make(kind: str, seed: int = 0):
    """(model, input shape) of a small float64 net."""
    torch.manual_seed(seed)
    if kind == "sigmoid":
        return _seq([12, 9, 7, 4], nn.Sigmoid).double(), (12,)
    if kind == "tanh":
        return _seq([12, 9, 7, 4], nn.Tanh).double(), (12,)
    if kind == "softplus":
        return _seq([12, 9, 7, 4], lambda: nn.Softplus(beta=2.0, threshold=math.inf)).double(), (12,)
    if kind == "relu":
        return _seq([12, 10, 4], nn.ReLU).double(), (12,)
    if kind == "mixed":  # one activation per layer: read by the Lipschitz module itself, not as_network
        net = nn.Sequential(nn.Linear(12, 9), nn.Tanh(), nn.Linear(9, 7), nn.Sigmoid(), nn.Linear(7, 4))
        return net.double(), (12,)
    if kind == "conv":
        net = nn.Sequential(nn.Conv2d(1, 3, 3, stride=2, padding=1), nn.Tanh(), nn.Conv2d(3, 4, 3), nn.Tanh(),
                            nn.Flatten(), nn.Linear(4 * 2 * 2, 5))
        return net.double(), (1, 8, 8)
    if kind == "pkg-mlp":
        return models.mlp(3, 10, "sigmoid", in_dim=12, n_classes=4).double(), (12,)
    if kind == "pkg-cnn":
        return models.cnn(channels=2, kernel=3, stride=1, activation="tanh", in_shape=(1, 7, 7),
                          n_classes=3).double(), (1, 7, 7)
    if kind == "linear":
        return nn.Linear(12, 5).double(), (12,)
    raise ValueError(kind)


SMOOTH = ("sigmoid", "tanh", "softplus", "mixed", "conv", "pkg-mlp", "pkg-cnn")
ALL = SMOOTH + ("relu", "linear")


def inputs(shape, n, seed=1, scale=2.0):
    g = torch.Generator().manual_seed(seed)
    return scale * torch.randn(n, *shape, generator=g, dtype=DT)


def n_classes(model, shape):
    with torch.no_grad():
        return model(torch.zeros(1, *shape, dtype=DT)).shape[1]


def layer_jacobians(model, shape):
    """Reference: the affine layers' matrices from autograd Jacobians, and the activations' constants."""
    lip = {nn.Sigmoid: 0.25, nn.Tanh: 1.0, nn.ReLU: 1.0, nn.Softplus: 1.0}
    mats, factor = [], 1.0
    if isinstance(model, models.MLP):
        seq = [m for _, m in model.layer_sequence()]
    elif isinstance(model, models.ConvNet):
        seq = [m for _, m in model.layer_sequence()]
    elif isinstance(model, nn.Sequential):
        seq = list(model)
    else:
        seq = [model]
    cur = torch.zeros(1, *shape, dtype=DT)
    for m in seq:
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            J = torch.autograd.functional.jacobian(lambda v, m=m: m(v.reshape(cur.shape)).reshape(-1),
                                                   cur.reshape(-1))
            mats.append(J)
        elif type(m) in lip:
            factor *= lip[type(m)]
        elif hasattr(m, "act"):  # sorobust activations.Layer
            factor *= m.act.g
        cur = m(cur)
    return mats, factor


# ----------------------------------------------------------------------------------------------------------------
# (1) L_{y,t} bounds the Lipschitz constant
# ----------------------------------------------------------------------------------------------------------------


def max_gradient_norms(model, shape, C, n=64, ascent=40, seed=3):
    """max over points of ‖∇(z_y − z_t)‖ for every pair: random points at several scales, then gradient ascent on
    ‖∇f‖² (double backward) from the best of them."""
    x0 = torch.cat([inputs(shape, n, seed, s) for s in (0.3, 1.0, 3.0)])
    best = torch.zeros(C, C, dtype=DT)

    def gnorm(x, y, t, create):
        x = x.requires_grad_(True)
        z = model(x)
        f = (z[:, y] - z[:, t]).sum()
        (g,) = torch.autograd.grad(f, x, create_graph=create)
        return g.flatten(1).norm(dim=1)

    for y in range(C):
        for t in range(C):
            if y == t:
                continue
            gn = gnorm(x0.clone(), y, t, False).detach()
            top = gn.argsort(descending=True)[:8]
            x = x0[top].clone()
            for _ in range(ascent):
                x = x.detach().requires_grad_(True)
                val = gnorm(x, y, t, True)
                gn = torch.maximum(gn.max(), val.max().detach()).reshape(1)
                (d,) = torch.autograd.grad((val ** 2).sum(), x)
                if not bool(torch.isfinite(d).all()) or float(d.abs().max()) == 0:
                    break
                x = x + 0.05 * d / d.flatten(1).norm(dim=1).clamp(min=1e-30).reshape(-1, *[1] * len(shape))
            best[y, t] = gn.max()
    return best


@pytest.mark.parametrize("kind", ALL)
def test_pair_constants_dominate_gradient_norms(kind):
    model, shape = make(kind)
    C = n_classes(model, shape)
    P = lipschitz.pair_constants(model, in_shape=shape if len(shape) == 3 else None)
    assert P.shape == (C, C) and P.dtype == DT
    assert torch.equal(P, P.T) and bool((P.diagonal() == 0).all())
    G = max_gradient_norms(model, shape, C, ascent=0 if kind in ("relu", "linear") else 40)
    off = ~torch.eye(C, dtype=torch.bool)
    assert bool((P[off] >= G[off]).all()), (P - G)[off].min()
    assert bool((G[off] > 0).all())


@pytest.mark.parametrize("kind", ALL)
def test_pair_constants_match_product_formula(kind):
    """L_{y,t} = ‖W_L[y] − W_L[t]‖ Π‖W_k‖ Π Lip(σ), recomputed from autograd Jacobians of the layers: never below
    it, and above it only by the rounding widening."""
    model, shape = make(kind)
    mats, factor = layer_jacobians(model, shape)
    for W in mats[:-1]:
        factor *= float(torch.linalg.svdvals(W)[0])
    Wl = mats[-1]
    ref = (Wl[:, None, :] - Wl[None, :, :]).norm(dim=-1) * factor
    P = lipschitz.pair_constants(model, in_shape=shape if len(shape) == 3 else None)
    assert bool((P >= ref).all())
    assert torch.allclose(P, ref, rtol=1e-9, atol=0)


def test_linear_constant_is_exact_row_difference():
    model, _ = make("linear")
    W = model.weight.detach()
    P = lipschitz.pair_constants(model)
    ref = (W[:, None, :] - W[None, :, :]).norm(dim=-1)
    assert torch.allclose(P, ref, rtol=1e-12, atol=0) and bool((P >= ref).all())


# ----------------------------------------------------------------------------------------------------------------
# (2) a linear classifier: the certificate is the exact distance to the decision boundary
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("wrap", [False, True])
def test_linear_network_radius_is_exact_distance(wrap):
    model, shape = make("linear", seed=4)
    if wrap:
        model = nn.Sequential(nn.Flatten(), model)
    W = model.weight if not wrap else model[1].weight
    b = model.bias if not wrap else model[1].bias
    W, b = W.detach(), b.detach()
    x = inputs(shape, 50, seed=5)
    z = x @ W.T + b
    y = z.argmax(1)
    res = lipschitz.certified_radius(model, x, y)
    # closed form: the distance from x to the polyhedron's boundary is min_t (z_y − z_t)/‖w_y − w_t‖
    ref = torch.full((50,), math.inf, dtype=DT)
    arg = torch.zeros(50, dtype=torch.long)
    for i in range(50):
        for t in range(W.shape[0]):
            if t != int(y[i]):
                d = float((z[i, y[i]] - z[i, t]) / (W[y[i]] - W[t]).norm())
                if d < ref[i]:
                    ref[i], arg[i] = d, t
    assert torch.allclose(res["radius"], ref, rtol=0, atol=1e-10)
    assert bool((res["radius"] <= ref).all())
    assert torch.equal(res["target"], arg)
    # just outside the certificate along the binding direction the class changes; just inside it does not
    d = W[y] - W[arg]
    d = d / d.norm(dim=1, keepdim=True)
    r = res["radius"].reshape(-1, 1)
    out = (x - (r * (1 + 1e-6) + 1e-12) * d) @ W.T + b
    inside = (x - r * (1 - 1e-6) * d) @ W.T + b
    assert bool((out.argmax(1) != y).all())
    assert bool((inside.argmax(1) == y).all())


# ----------------------------------------------------------------------------------------------------------------
# (3) soundness against PGD
# ----------------------------------------------------------------------------------------------------------------


def pgd_in_balls(model, x, y, r, steps=60, restarts=2, seed=7):
    """PGD-ℓ2 inside each point's ball ‖δ‖ ≤ r_i (float64): untargeted (maximise max_{j≠y} z_j − z_y) and
    targeted at every wrong class t (maximise z_t − z_y), each from ``restarts`` random starts; returns the
    smallest z_y − max_{j≠y} z_j found at any iterate (per point)."""
    B = x.shape[0]
    shape = x.shape[1:]
    flat = x.flatten(1)
    rr = r.reshape(B, 1)
    g = torch.Generator().manual_seed(seed)
    idx = torch.arange(B)
    worst = torch.full((B,), math.inf, dtype=DT)
    with torch.no_grad():
        C = model(x[:1]).shape[1]

    def margins(v):
        zz = model(v.reshape(B, *shape))
        other = zz.clone()
        other[idx, y] = -torch.inf
        return zz[idx, y] - other.max(1).values, zz

    for tgt in [None] + list(range(C)):
        for _ in range(restarts):
            d = torch.randn(flat.shape, generator=g, dtype=DT)
            d = d / d.norm(dim=1, keepdim=True) * rr * torch.rand(B, 1, generator=g, dtype=DT)
            for k in range(steps):
                v = (flat + d).requires_grad_(True)
                m, zz = margins(v)
                worst = torch.minimum(worst, m.detach())
                obj = m if tgt is None else zz[idx, y] - zz[:, tgt]
                (gr,) = torch.autograd.grad(obj.sum(), v)
                step = rr * (0.25 if k < steps // 2 else 0.05)
                d = d.detach() - step * gr / gr.norm(dim=1, keepdim=True).clamp(min=1e-30)
                n = d.norm(dim=1, keepdim=True)
                d = torch.where(n > rr, d * rr / n, d)
            with torch.no_grad():
                worst = torch.minimum(worst, margins(flat + d)[0])
    return worst


@pytest.mark.parametrize("kind", ("sigmoid", "tanh", "relu", "mixed", "conv", "linear"))
def test_pgd_finds_nothing_inside_the_certificate(kind):
    model, shape = make(kind, seed=11)
    x = inputs(shape, 200, seed=12, scale=1.0)
    with torch.no_grad():
        y = model(x).argmax(1)
    y[:20] = torch.randint(n_classes(model, shape), (20,), generator=torch.Generator().manual_seed(0))
    res = lipschitz.certified_radius(model, x, y)
    r = res["radius"]
    with torch.no_grad():
        correct = model(x).argmax(1) == y
    assert bool((r[~correct] == 0).all())
    cert = r > 0
    assert int(cert.sum()) >= 100
    worst = pgd_in_balls(model, x[cert], y[cert], r[cert])
    assert bool((worst > 0).all()), worst.min()
    if kind == "linear":  # the certificate is tight: the same attack just beyond it succeeds
        worst_out = pgd_in_balls(model, x[cert], y[cert], r[cert] * 1.01 + 1e-9)
        assert bool((worst_out < 0).all())


# ----------------------------------------------------------------------------------------------------------------
# (4) float32 never above float64; (5) runner-up ≥ all; the registry signature; caching
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ("sigmoid", "softplus", "conv", "pkg-cnn"))
def test_float32_radius_not_above_float64(kind):
    model64, shape = make(kind, seed=21)
    model32 = copy.deepcopy(model64).float()
    model64 = copy.deepcopy(model32).double()  # the same (float32-representable) weights
    x32 = inputs(shape, 100, seed=22, scale=1.0).float()
    with torch.no_grad():
        y = model64(x32.double()).argmax(1)
    r32 = lipschitz.certified_radius(model32, x32, y)["radius"]
    r64 = lipschitz.certified_radius(model64, x32.double(), y)["radius"]
    assert r32.dtype == torch.float32 and r64.dtype == DT
    assert bool((r32.double() <= r64).all())
    assert torch.allclose(r32.double(), r64, rtol=1e-6, atol=1e-12)
    assert bool((r64 > 0).any())


@pytest.mark.parametrize("kind", ("tanh", "conv", "pkg-mlp"))
def test_runner_up_radius_at_least_all_classes(kind):
    model, shape = make(kind, seed=31)
    x = inputs(shape, 80, seed=32)
    with torch.no_grad():
        logits = model(x)
    y = logits.argmax(1)
    y[:10] = (y[:10] + 1) % logits.shape[1]
    gen = torch.Generator().manual_seed(0)
    r_all = lipschitz.certified_radius(model, x, y, targets="all", steps=20, generator=gen)
    r_ru = lipschitz.certified_radius(model, x, y, targets="runner-up", steps=20, generator=gen)
    assert set(r_all) == {"radius", "target", "time_s"} and isinstance(r_all["time_s"], float)
    assert r_all["target"].dtype == torch.long and r_all["radius"].shape == (80,)
    assert bool((r_ru["radius"] >= r_all["radius"]).all())
    assert torch.equal(r_ru["target"], runner_up(logits, y))
    assert bool((r_all["radius"][:10] == 0).all()) and bool((r_ru["radius"][:10] == 0).all())
    assert bool((r_all["target"] != y).all())
    # "all" is the minimum over the classes: recompute it from the pair constants
    P = lipschitz.pair_constants(model, in_shape=shape if len(shape) == 3 else None)
    m = logits.gather(1, y.reshape(-1, 1)) - logits
    q = m / P[y].masked_fill(P[y] == 0, math.inf)
    q[torch.arange(80), y] = math.inf
    ref = q.min(1).values.clamp(min=0)
    assert torch.allclose(r_all["radius"], ref, rtol=1e-9, atol=1e-10)  # the rounding-error slack is ~1e-12


def test_pair_constants_cached_and_refreshed(monkeypatch):
    model, _ = make("sigmoid", seed=41)
    calls = []
    real = lipschitz._snapshot_uncached
    monkeypatch.setattr(lipschitz, "_snapshot_uncached", lambda *a: calls.append(1) or real(*a))
    P1 = lipschitz.pair_constants(model)
    x = inputs((12,), 30)
    lipschitz.certified_radius(model, x, model(x).argmax(1))
    P2 = lipschitz.pair_constants(model)
    assert len(calls) == 1 and torch.equal(P1, P2)
    with torch.no_grad():
        model[0].weight.mul_(2.0)
    P3 = lipschitz.pair_constants(model)
    assert len(calls) == 2 and torch.allclose(P3, 2 * P1, rtol=1e-9)  # ‖2W₁‖ = 2‖W₁‖


@pytest.mark.parametrize("kind", ("sigmoid", "softplus", "conv", "pkg-cnn"))
def test_forward_error_bound_covers_another_float64_evaluation(kind):
    """The snapshot's float64 logits ẑ and the model's own float64 forward are two roundings of the same function:
    both within the error bound of the exact values, so they differ by at most twice it (and the bound is small)."""
    model, shape = make(kind, seed=61)
    x = inputs(shape, 40, seed=62)
    snap = lipschitz.snapshot(model, shape if len(shape) == 3 else None)
    z, err = snap.forward_with_error(x.flatten(1))
    with torch.no_grad():
        zm = model(x)
    assert bool(((z - zm).abs() <= 2 * err).all())
    assert float(err.max()) < 1e-10 * (1 + float(z.abs().max()))


def test_refusals_name_the_layer():
    from sorobust.errors import SorobustError

    with pytest.raises(SorobustError, match="Softplus"):
        lipschitz.pair_constants(nn.Sequential(nn.Linear(4, 3), nn.Softplus(), nn.Linear(3, 2)).double())
    with pytest.raises(SorobustError, match="BatchNorm|not a layer"):
        lipschitz.pair_constants(nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.Linear(3, 2)).double())


# ----------------------------------------------------------------------------------------------------------------
# deel-torchlip 1-Lipschitz nets (sorobust.lipnet)
# ----------------------------------------------------------------------------------------------------------------


def _trained_lipnet(widths, steps=3, seed=0):
    from sorobust import lipnet

    torch.manual_seed(seed)
    model = lipnet.lipschitz_mlp(widths).float()
    loss = lipnet.hkr_loss(n_classes=widths[-1])
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(64, widths[0], generator=g, dtype=torch.float32)
    y = torch.randint(widths[-1], (64,), generator=g)
    for _ in range(steps):
        opt.zero_grad()
        out = model(x)
        assert out.shape == (64, widths[-1])
        val = loss(out, y)
        val.backward()
        assert all(p.grad is not None for p in model.parameters())
        opt.step()
    model.train()
    with torch.no_grad():
        model(x)  # refresh the cached (eval-mode) weights from the last step
    return model.eval(), x


def test_lipnet_gradient_norms_at_most_one():
    model, _ = _trained_lipnet((20, 16, 16, 4))
    m64 = copy.deepcopy(model).double()
    x = inputs((20,), 50, seed=51, scale=1.0)
    for i in range(0, 50, 5):
        J = torch.autograd.functional.jacobian(lambda v: m64(v.reshape(1, -1)).reshape(-1), x[i])
        assert float(torch.linalg.matrix_norm(J, ord=2)) <= 1 + 1e-6
        assert float(J.norm(dim=1).max()) <= 1 + 1e-6


def test_lipnet_certificate_sound_and_close_to_library_formula():
    from sorobust import lipnet

    model, _ = _trained_lipnet((20, 16, 16, 4))
    x = inputs((20,), 200, seed=52, scale=1.0).float()
    with torch.no_grad():
        logits = model(x).double()
    y = logits.argmax(1)
    res = lipschitz.certified_radius(model, x, y)
    r = res["radius"].double()
    lib = lipnet.margin_certificate(logits, y)
    # the sound radius is the library's margin/√2 up to the layers' deviation from orthonormality
    assert torch.allclose(r, lib, rtol=1e-4, atol=1e-6)
    m64 = copy.deepcopy(model).double()
    cert = r > 0
    worst = pgd_in_balls(m64, x[cert].double(), y[cert], r[cert])
    assert bool((worst > 0).all())


def test_lipnet_train_mode_refused():
    from sorobust.errors import SorobustError

    model, x = _trained_lipnet((8, 6, 3), steps=1)
    model.train()
    with pytest.raises(SorobustError, match="eval"):
        lipschitz.certified_radius(model, x, torch.zeros(x.shape[0], dtype=torch.long))


def test_lipnet_784_1024_1024_10_builds():
    from sorobust import lipnet

    torch.manual_seed(0)
    model = lipnet.lipschitz_mlp((784, 1024, 1024, 10)).float()
    x = torch.rand(4, 1, 28, 28, dtype=torch.float32)
    out = model(x)
    lipnet.hkr_loss()(out, torch.tensor([0, 1, 2, 3])).backward()
    model.eval()
    P = lipschitz.pair_constants(model)
    off = ~torch.eye(10, dtype=torch.bool)
    assert bool((P[off] < math.sqrt(2) * (1 + 1e-5)).all()) and bool((P[off] > 1.0).all())
