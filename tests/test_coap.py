"""Tests for sorobust.certify.coap: COAP (Wong & Kolter's dual bound) through convex_adversarial 0.4.4.

Oracles, independent of the code under test:

* our CROWN with the "same-slope" relu lower bound (Fast-Lin), an independent implementation of the same bound
  (baselines.md §1, §5), for the margin bounds, the radius and the exact robust loss (value and gradients);
* convex_adversarial called once per point with a scalar eps, for the per-point eps batching;
* sampling (points inside the ball and on its sphere) and PGD (``attacks.pgd_l2``) against every bound and radius.

Everything runs in float64 on one thread. Skipped when convex_adversarial is not installed
(``pip install --no-deps convex-adversarial==0.4.4``).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sorobust import attacks, models
from conftest import wrong_classes
from sorobust.certify import coap, crown
from sorobust.errors import SorobustError

pytest.importorskip("convex_adversarial", reason="pip install --no-deps convex-adversarial==0.4.4")

DT = torch.float64
NETS = ("mlp2", "mlp3", "cnn", "cnn-spec")

pytestmark = pytest.mark.usefixtures("float64_single_thread")


def make_net(kind: str, seed: int = 0, n_points: int = 6, act: str = "relu"):
    """A small random float64 relu net and inputs labelled by its own prediction (every point correct)."""
    g = torch.Generator().manual_seed(2000 + seed)
    torch.manual_seed(seed)
    if kind == "cnn":
        model = models.cnn(channels=2, kernel=3, stride=1, activation=act, in_shape=(1, 7, 7), n_classes=3)
    elif kind == "cnn-spec":  # the MNIST-shaped conv net of the harness, small: 2 filters 4×4 stride 3 → 162 units
        model = models.build(f"cnn-2c4k3s-{act}")
    else:
        depth = int(kind[3:])
        model = models.mlp(depth, {2: 40, 3: 24}[depth], act, in_dim={2: 30, 3: 16}[depth], n_classes=4)
    model = model.to(DT).eval()
    x = torch.randn(n_points, model.in_dim, generator=g, dtype=DT)
    if kind == "cnn-spec":
        x = 0.2 * x
    with torch.no_grad():
        y = model(x).argmax(1)
    return model, x, y


def margins(model, x, y, targets):
    with torch.no_grad():
        z = model(x.flatten(1))
    return z.gather(1, y.reshape(-1, 1)) - z.gather(1, targets)


def n_crossing(model, x, eps):
    with torch.no_grad():
        bounds, *_ = crown.intermediate_bounds(model, x.flatten(1), torch.full((x.shape[0],), float(eps), dtype=DT))
    return sum(int(((lo < 0) & (up > 0)).sum()) for lo, up in bounds)


def ball_points(x, radius, n, g):
    """n points per input: directions on the sphere scaled by radius·U^(1/d) (uniform in the ball), and as many
    points on the sphere itself. Returns (B, 2n, d)."""
    B, d = x.shape
    v = torch.randn(B, 2 * n, d, generator=g, dtype=DT)
    v = v / v.norm(dim=-1, keepdim=True)
    r = radius.reshape(B, 1, 1) * torch.cat([torch.rand(B, n, 1, generator=g, dtype=DT) ** (1 / d),
                                             torch.ones(B, n, 1, dtype=DT)], 1)
    return x.unsqueeze(1) + r * v


# ----------------------------------------------------------------------------------------------------------------
# to_sequential
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", NETS)
def test_to_sequential_same_function_and_shared_parameters(kind):
    model, x, y = make_net(kind)
    seq = coap.to_sequential(model)
    xi = coap._inputs(model, x)
    with torch.no_grad():
        assert (seq(xi) - model(x)).abs().max() == 0
    if model.kind == "mlp":  # the leading Flatten also takes images
        with torch.no_grad():
            assert (seq(x.reshape(x.shape[0], 1, -1)) - model(x)).abs().max() == 0
    assert {id(p) for p in seq.parameters()} == {id(p) for p in model.parameters()}
    model.zero_grad()
    F.cross_entropy(seq(xi), y).backward()
    assert all(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in model.parameters())


# ----------------------------------------------------------------------------------------------------------------
# margin bounds
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", NETS)
def test_margin_bounds_equal_crown_same_slope(kind):
    model, x, y = make_net(kind, seed=1)
    n = model.n_classes
    tg = wrong_classes(y, n)
    worst = 0.0
    for eps in (0.05, 0.3, 1.0, 3.0):
        with torch.no_grad():
            ours = coap.margin_bounds(model, x, y, eps)
            ref = crown.margin_bounds(model, x, y, eps, tg, method="crown", relu_lower="same-slope")
        assert ours.shape == ref.shape == (x.shape[0], n - 1)
        worst = max(worst, float((ours - ref).abs().max()))
        if eps == 1.0:  # the relaxation is exercised: unstable neurons exist
            assert n_crossing(model, x, eps) > 0
    assert worst <= 1e-6


@pytest.mark.parametrize("kind", ("mlp3", "cnn"))
def test_per_point_eps_is_one_batch_equal_to_per_point_calls(kind):
    model, x, y = make_net(kind, seed=2)
    eps = torch.tensor([0.05, 0.2, 0.5, 1.0, 2.0, 0.0], dtype=DT)
    tg = wrong_classes(y, model.n_classes)[:, :2]  # explicit targets too
    with torch.no_grad():
        batched = coap.margin_bounds(model, x, y, eps, tg)
        single = torch.cat([coap.margin_bounds(model, x[i:i + 1], y[i:i + 1], float(eps[i]), tg[i:i + 1])
                            for i in range(len(eps))])
        ref = crown.margin_bounds(model, x, y, eps, tg, relu_lower="same-slope")
    assert (batched - single).abs().max() <= 1e-12
    assert (batched - ref).abs().max() <= 1e-6
    assert (batched[-1] - margins(model, x[-1:], y[-1:], tg[-1:])[0]).abs().max() <= 1e-9  # eps = 0: the margin


@pytest.mark.parametrize("kind", NETS)
def test_bound_holds_at_sampled_points(kind):
    model, x, y = make_net(kind, seed=3, n_points=4)
    n = model.n_classes
    tg = wrong_classes(y, n)
    g = torch.Generator().manual_seed(7)
    for eps in (0.2, 1.0):
        radius = torch.full((x.shape[0],), eps, dtype=DT)
        with torch.no_grad():
            lb = coap.margin_bounds(model, x, y, radius)
        pts = ball_points(x, radius, 1000, g)  # 2000 per input: 1000 inside, 1000 on the sphere
        B, P, d = pts.shape
        m = margins(model, pts.reshape(B * P, d), y.repeat_interleave(P), tg.repeat_interleave(P, 0))
        m = m.reshape(B, P, n - 1).min(1).values
        assert (m >= lb - 1e-9).all()


# ----------------------------------------------------------------------------------------------------------------
# certified radius
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ("mlp2", "mlp3", "cnn"))
def test_certified_radius_sound_against_bounds_and_pgd(kind):
    model, x, y = make_net(kind, seed=4, n_points=6)
    y = y.clone()
    y[0] = (y[0] + 1) % model.n_classes  # one misclassified point: radius 0
    res = coap.certified_radius(model, x, y, steps=16, eps_max=4.0)
    r = res["radius"]
    assert set(res) == {"radius", "target", "time_s"} and r.shape == (x.shape[0],)
    assert r[0] == 0
    cert = r > 0
    assert int(cert.sum()) >= 3
    with torch.no_grad():
        lb = coap.margin_bounds(model, x[cert], y[cert], r[cert])
    assert (lb.min(1).values > 0).all()
    # the reported target is the binding one at the radius
    tg = wrong_classes(y[cert], model.n_classes)
    assert (tg.gather(1, lb.argmin(1, keepdim=True)).squeeze(1) == res["target"][cert]).all()
    # just above the radius, the bound fails (the radius is the bisection's largest certified ε)
    prec = 4.0 / 2 ** 16
    with torch.no_grad():
        lb_hi = coap.margin_bounds(model, x[cert], y[cert], r[cert] + 2 * prec)
    assert (lb_hi.min(1).values <= 0).all()
    # PGD (untargeted and at the runner-up) inside the radius never flips a certified point
    g = torch.Generator().manual_seed(0)
    for i in cert.nonzero().squeeze(1).tolist():
        rho = float(r[i])
        for t in ("all", "runner-up"):
            att = attacks.pgd_l2(model, x[i:i + 1], y[i:i + 1], rho, targets=t, steps=60, step_size=rho / 15,
                                 init_std=rho / 100, clamp=None, generator=g)
            assert float(att.distance[0]) <= rho * (1 + 1e-9)
            assert bool(att.robust[0]) and float(att.f[0]) > 0


def test_certified_radius_equals_crown_same_slope_and_is_monotone_in_steps():
    model, x, y = make_net("mlp3", seed=5, n_points=6)
    res8 = coap.certified_radius(model, x, y, steps=8)
    res16 = coap.certified_radius(model, x, y, steps=16)
    r8, r16 = res8["radius"], res16["radius"]
    assert (r16 >= r8).all() and (r16 - r8 <= 4.0 / 2 ** 8).all()  # nested brackets
    assert (r16 > 0).all()
    ref = crown.certified_radius(model, x, y, method="crown", relu_lower="same-slope", steps=16)
    assert (ref["radius"] - r16).abs().max() <= 4.0 / 2 ** 16
    # batching over points does not change the result
    res_b = coap.certified_radius(model, x, y, steps=16, batch_size=4)
    assert (res_b["radius"] == r16).all()


def test_certified_radius_target_protocols():
    model, x, y = make_net("mlp2", seed=6, n_points=5)
    r_all = coap.certified_radius(model, x, y, steps=12)["radius"]
    r_ru = coap.certified_radius(model, x, y, targets="runner-up", steps=12)["radius"]
    g = torch.Generator().manual_seed(3)
    res_rand = coap.certified_radius(model, x, y, targets="random", steps=12, generator=g)
    assert (res_rand["target"] != y).all()
    prec = 4.0 / 2 ** 12
    assert (r_ru >= r_all - prec).all() and (res_rand["radius"] >= r_all - prec).all()
    one = wrong_classes(y, model.n_classes)[:, :1]
    res_t = coap.certified_radius(model, x, y, targets=one, steps=12)
    assert (res_t["target"] == one[:, 0]).all()


# ----------------------------------------------------------------------------------------------------------------
# robust loss
# ----------------------------------------------------------------------------------------------------------------


def _reference_robust_ce(model, x, y, eps):
    """convex_adversarial's robust_ce, computed from our CROWN same-slope bounds: CE of f with f_y = 0 and
    f_j = −lb_j (the dual applied to e_y − e_j for every class j; the row j = y is zero)."""
    n = model.n_classes
    B = x.shape[0]
    tg = wrong_classes(y, n)
    lb = crown.margin_bounds(model, x, y, eps, tg, relu_lower="same-slope")
    f = torch.zeros(B, n, dtype=DT).scatter(1, tg, -lb)
    return F.cross_entropy(f, y), float((lb.min(1).values <= 0).double().mean())


@pytest.mark.parametrize("kind", ("mlp3", "cnn"))
def test_exact_robust_loss_equals_ce_of_dual_bounds_with_gradients(kind):
    model, x, y = make_net(kind, seed=7)
    params = list(model.parameters())
    for eps in (0.3, 1.0):
        ce, err = coap.robust_loss(model, x, y, eps, norm_type="l2")
        g_ours = torch.autograd.grad(ce, params)
        ref, ref_err = _reference_robust_ce(model, x, y, eps)
        g_ref = torch.autograd.grad(ref, params)
        assert abs(float(ce.detach()) - float(ref.detach())) <= 1e-9
        assert isinstance(err, float) and abs(err - ref_err) <= 1e-12
        for a, b in zip(g_ours, g_ref):
            assert float(a.abs().sum()) > 0
            assert (a - b).abs().max() <= 1e-8 * (1 + float(b.abs().max()))


def test_robust_loss_l2_normal_trains_the_model_and_approximates_exact():
    torch.manual_seed(0)
    model = models.mlp(3, 120, "relu", in_dim=300, n_classes=5).to(DT)
    g = torch.Generator().manual_seed(1)
    x = 0.5 * torch.randn(16, 300, generator=g, dtype=DT)
    with torch.no_grad():
        y = model(x).argmax(1)
    eps = 0.8
    exact = float(coap.robust_loss(model, x, y, eps, norm_type="l2")[0].detach())
    assert n_crossing(model, x, eps) > 200  # the relu projection is used as well as the input one
    # projections (proj < input dim and < unstable relus): a random estimate near the exact value
    params = list(model.parameters())
    vals = []
    for seed in (1, 2, 3, 4):
        ce, err = coap.robust_loss(model, x, y, eps, norm_type="l2_normal", proj=150, seed=seed)
        grads = torch.autograd.grad(ce, params)
        assert all(float(gr.abs().sum()) > 0 for gr in grads)
        vals.append(float(ce.detach()))
    assert max(abs(v - exact) for v in vals) <= 0.15 * exact
    assert abs(sum(vals) / len(vals) - exact) <= 0.05 * exact
    # the seed makes it reproducible
    again = float(coap.robust_loss(model, x, y, eps, norm_type="l2_normal", proj=150, seed=1)[0].detach())
    assert again == vals[0]
    # proj ≥ input dim and ≥ unstable relus: no projection, the exact bound
    big = float(coap.robust_loss(model, x, y, eps, norm_type="l2_normal", proj=100000)[0].detach())
    assert abs(big - exact) <= 1e-12
    # an optimizer over model.parameters() trains it: one step lowers the exact robust loss
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    opt.zero_grad()
    coap.robust_loss(model, x, y, eps, norm_type="l2_normal", proj=150, seed=1)[0].backward()
    opt.step()
    assert float(coap.robust_loss(model, x, y, eps, norm_type="l2")[0].detach()) < exact


def test_robust_loss_per_point_eps_and_bad_arguments():
    model, x, y = make_net("mlp2", seed=8)
    eps = torch.linspace(0.1, 1.0, x.shape[0], dtype=DT)
    ce, _ = coap.robust_loss(model, x, y, eps, norm_type="l2")
    ref, _ = _reference_robust_ce(model, x, y, eps)
    assert abs(float(ce.detach()) - float(ref.detach())) <= 1e-9
    with pytest.raises(SorobustError, match="one eps"):
        coap.robust_loss(model, x, y, eps, norm_type="l2_normal")
    same = torch.full((x.shape[0],), 0.5, dtype=DT)  # a constant tensor is one eps
    a = coap.robust_loss(model, x, y, same, norm_type="l2_normal", seed=0)[0]
    b = coap.robust_loss(model, x, y, 0.5, norm_type="l2_normal", seed=0)[0]
    assert float(a.detach()) == float(b.detach())
    with pytest.raises(ValueError, match="norm_type"):
        coap.robust_loss(model, x, y, 0.5, norm_type="l1")


@pytest.mark.parametrize("act", ("softplus", "tanh", "sigmoid"))
def test_non_relu_models_are_rejected(act):
    for kind in ("mlp2", "cnn"):
        model, x, y = make_net(kind, act=act, n_points=2)
        for call in (lambda: coap.to_sequential(model),
                     lambda: coap.margin_bounds(model, x, y, 0.1),
                     lambda: coap.certified_radius(model, x, y, steps=2),
                     lambda: coap.robust_loss(model, x, y, 0.1)):
            with pytest.raises(SorobustError, match="relu") as info:
                call()
            assert "\n" not in str(info.value)
