"""Tests for sorobust.attacks: PGD-L2 with the reference schedule and the second-order attack (Definition 2).

References are independent of the code under test: model-call counting, a closed-form PGD path on an affine net,
brute-force minimisation of the margin over the ball (dense sampling of spheres inside it plus PGD), and
recomputation of every reported field from the model. Everything runs in float64.
"""

from __future__ import annotations

import functools
import math

import pytest
import torch

from sorobust import activations, attacks, models

DT = torch.float64


pytestmark = pytest.mark.usefixtures("one_thread")


def logits(model, x):
    with torch.no_grad():
        return model(x)


class Counting(torch.nn.Module):
    """Wraps a model and counts its forward calls."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return self.inner(x)


def small_net(act="tanh", depth=2, seed=0, scale=1.5, in_dim=4, n_classes=3):
    torch.manual_seed(seed)
    model = models.mlp(depth, 16, act, in_dim=in_dim, n_classes=n_classes).double()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(scale)
    return model


def points_in_box(model, n, dim, seed=0):
    x = torch.rand(n, dim, dtype=DT, generator=torch.Generator().manual_seed(seed))
    return x, logits(model, x).argmax(1)


# ----------------------------------------------------------------------------------------------------------------
# PGD-L2
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("rho", [0.05, 0.29, 0.3, 0.5, 1.0, 1.58])
def test_pgd_default_schedule_is_int_200_rho_steps(rho):
    model = small_net()
    x, y = points_in_box(model, 5, 4)
    wrapped = Counting(model)
    attacks.pgd_l2(wrapped, x, y, rho, steps=0, generator=torch.Generator().manual_seed(0))
    overhead = wrapped.calls
    wrapped.calls = 0
    r_default = attacks.pgd_l2(wrapped, x, y, rho, generator=torch.Generator().manual_seed(0))
    expected = int(200 * rho)  # the reference's int(eps*200), float truncation included (0.29 → 57)
    assert wrapped.calls - overhead == expected
    r_explicit = attacks.pgd_l2(model, x, y, rho, steps=expected, generator=torch.Generator().manual_seed(0))
    assert torch.equal(r_default.x_adv, r_explicit.x_adv)


IDENTITY = activations.Activation("identity", fn=lambda z: z, d1=torch.ones_like, d2=torch.zeros_like, g=1.0,
                                  h_lo=0.0, h_hi=0.0, crit1=(), crit2=())


@pytest.mark.parametrize("rho", [0.3, 0.55, 1.0])
def test_pgd_path_on_affine_net(rho):
    """Affine net, no random start: the targeted gradient is the constant w_t − w_y, so after k steps of size s the
    point is x0 + min(k s, ρ) (w_t − w_y)/‖w_t − w_y‖ (no clamping)."""
    model = small_net(depth=3, seed=4, scale=1.0)
    model.activation = IDENTITY
    W = torch.eye(4, dtype=DT)
    for layer in model.layers():
        W = layer.weight.detach() @ W
    x = torch.randn(6, 4, dtype=DT, generator=torch.Generator().manual_seed(2))
    y = logits(model, x).argmax(1)
    t = (y + 1) % 3
    u = W[t] - W[y]
    u = u / u.norm(dim=1, keepdim=True)
    step = 0.002
    k = int(200 * rho)  # steps=None: int(200ρ) steps of the given size
    r = attacks.pgd_l2(model, x, y, rho, targets=t, step_size=step, init_std=0.0, clamp=None)
    expected = x + min(k * step, rho) * u
    # each step is s·g/(‖g‖ + 1e-10) (the reference's guard), short of s by a relative ~1e-10/‖g‖
    torch.testing.assert_close(r.x_adv, expected, rtol=0, atol=1e-8)
    assert not torch.allclose(r.x_adv, x + min((k - 1) * step, rho) * u, rtol=0, atol=1e-6)
    # long enough to reach the sphere: it stays on it, in the direction u
    r = attacks.pgd_l2(model, x, y, rho, targets=t, steps=int(rho / step) + 20, step_size=step, init_std=0.0,
                       clamp=None)
    torch.testing.assert_close(r.x_adv, x + rho * u, rtol=0, atol=1e-12)
    assert bool(((r.x_adv - x).norm(dim=1) <= rho + 1e-12).all())


@pytest.mark.parametrize("targets", ["runner-up", "all"])
@pytest.mark.parametrize("clamp", [(0.0, 1.0), None])
@pytest.mark.parametrize("rho", [0.1, 0.5, 2.0])
def test_pgd_stays_in_ball_and_box(rho, clamp, targets):
    model = small_net("tanh", seed=3, scale=4.0)
    x, y = points_in_box(model, 20, 4, seed=3)
    for step_size, steps in ((0.01, None), (rho / 2, 40), (1.0, 10)):
        r = attacks.pgd_l2(model, x, y, rho, targets=targets, steps=steps, step_size=step_size, clamp=clamp,
                           generator=torch.Generator().manual_seed(5))
        dist = (r.x_adv - x).norm(dim=1)
        assert bool((dist <= rho + 1e-9).all()), dist.max().item()
        if clamp is not None:
            assert bool(((r.x_adv >= 0) & (r.x_adv <= 1)).all())


@pytest.mark.parametrize("targets", ["runner-up", "all"])
def test_pgd_seeded_and_fields(targets):
    model = small_net("tanh", seed=0, scale=3.0)
    x, y = points_in_box(model, 20, 4, seed=4)
    a = attacks.pgd_l2(model, x, y, 0.5, targets=targets, generator=torch.Generator().manual_seed(9))
    b = attacks.pgd_l2(model, x, y, 0.5, targets=targets, generator=torch.Generator().manual_seed(9))
    c = attacks.pgd_l2(model, x, y, 0.5, targets=targets, generator=torch.Generator().manual_seed(10))
    assert torch.equal(a.x_adv, b.x_adv) and torch.equal(a.pred, b.pred) and torch.equal(a.f, b.f)
    assert not torch.equal(a.x_adv, c.x_adv)
    # fields recomputed from the model
    z0 = logits(model, x)
    z = logits(model, a.x_adv)
    idx = torch.arange(len(y))
    if targets == "runner-up":
        masked = z0.clone()
        masked[idx, y] = -math.inf
        assert torch.equal(a.target, masked.argmax(1))
    else:
        masked = z.clone()
        masked[idx, y] = -math.inf
        assert torch.equal(a.target, masked.argmax(1))
    assert torch.equal(a.pred, z.argmax(1))
    torch.testing.assert_close(a.f, z[idx, y] - z[idx, a.target], rtol=0, atol=1e-12)
    torch.testing.assert_close(a.distance, (a.x_adv - x).norm(dim=1), rtol=0, atol=1e-12)
    assert torch.equal(a.success, a.pred != y)
    assert torch.equal(a.robust, a.pred == y)
    assert torch.equal(a.robust_reference, a.pred != a.target)
    assert int(a.success.sum()) > 0  # the attack does change some predictions at this radius


# ----------------------------------------------------------------------------------------------------------------
# second-order attack vs brute force
# ----------------------------------------------------------------------------------------------------------------

SO_NETS = {"sigmoid": ("sigmoid", 0, 4.0), "tanh": ("tanh", 0, 1.5), "softplus": ("softplus", 0, 1.5)}
SO_RADII = (0.1, 0.3, 0.6)


@functools.lru_cache(maxsize=None)
def so_net(name):
    act, seed, scale = SO_NETS[name]
    model = small_net(act, depth=2, seed=seed, scale=scale)
    x = torch.randn(12, 4, dtype=DT, generator=torch.Generator().manual_seed(0))
    return model, x, logits(model, x).argmax(1)


_DIRS = torch.randn(4000, 4, dtype=DT, generator=torch.Generator().manual_seed(42))
_DIRS = _DIRS / _DIRS.norm(dim=1, keepdim=True)


def brute_min(model, x0, y0, t, radius, gen):
    """min of z_y − z_t over the ball ‖x − x0‖ ≤ radius: dense samples on spheres of radius s·radius, plus targeted
    PGD (no clamping) with two step sizes. Every value is attained at a point of the ball."""
    pts = torch.cat([x0 + s * radius * _DIRS for s in (1.0, 0.95, 0.8, 0.6, 0.3)])
    z = logits(model, pts)
    best = float((z[:, y0] - z[:, t]).min())
    for step_size, steps in ((radius / 20, 150), (radius / 5, 60)):
        p = attacks.pgd_l2(model, x0[None], torch.tensor([y0]), radius, targets=torch.tensor([t]), steps=steps,
                           step_size=step_size, clamp=None, generator=gen)
        assert float(p.distance[0]) <= radius + 1e-12
        zz = logits(model, p.x_adv)
        best = min(best, float(zz[0, y0] - zz[0, t]))
    return best


@pytest.mark.parametrize("rho", SO_RADII)
@pytest.mark.parametrize("name", list(SO_NETS))
def test_second_order_attack_vs_brute_force(name, rho):
    model, x, y = so_net(name)
    r = attacks.second_order(model, x, y, rho, targets="runner-up")
    z0 = logits(model, x)
    idx = torch.arange(len(y))
    masked = z0.clone()
    masked[idx, y] = -math.inf
    assert torch.equal(r.target, masked.argmax(1))
    z = logits(model, r.x_adv)
    f_adv = z[idx, y] - z[idx, r.target]
    torch.testing.assert_close(r.f, f_adv, rtol=0, atol=1e-12)
    dist = (r.x_adv - x).norm(dim=1)
    torch.testing.assert_close(r.distance, dist, rtol=0, atol=1e-12)
    assert torch.equal(r.success, (dist - rho).abs() <= 1e-4)
    assert torch.equal(r.pred, z.argmax(1))
    gen = torch.Generator().manual_seed(7)
    n_feasible = 0
    for i in range(len(y)):
        yi, ti = int(y[i]), int(r.target[i])
        fmin_rho = brute_min(model, x[i], yi, ti, rho, gen)
        # weak duality: dual_bound is a lower bound on min over the ρ-ball
        assert float(r.dual_bound[i]) <= fmin_rho + 1e-9, (i, float(r.dual_bound[i]), fmin_rho)
        # ...and on the Lagrangian at the returned point (always, feasible or not)
        phi = float(f_adv[i]) + float(r.eta[i]) / 2 * (float(dist[i]) ** 2 - rho ** 2)
        assert float(r.dual_bound[i]) <= phi + 1e-9
        if bool(r.success[i]):
            # primal = dual: x* minimises f over the ball of its own radius ‖x* − x0‖ (= ρ up to 1e-4)
            fmin_own = brute_min(model, x[i], yi, ti, float(dist[i]), gen)
            assert float(f_adv[i]) <= fmin_own + 1e-6, (i, float(f_adv[i]), fmin_own)
            if float(dist[i]) <= rho:  # a feasible point of the ρ-ball cannot go below the bound on its minimum
                n_feasible += 1
                assert float(f_adv[i]) >= float(r.dual_bound[i]) - 1e-9
    if rho <= 0.3:  # non-vacuity: the attack succeeds (primal = dual) on most points at small radii
        assert int(r.success.sum()) >= len(y) // 2
        assert n_feasible >= 1


@pytest.mark.parametrize("name", list(SO_NETS))
def test_positive_dual_bound_means_pgd_cannot_reach_target(name):
    model, x, y = so_net(name)
    n_pos = 0
    for rho in SO_RADII + (0.05,):
        r = attacks.second_order(model, x, y, rho, targets="runner-up")
        pos = r.dual_bound > 0
        n_pos += int(pos.sum())
        if not bool(pos.any()):
            continue
        for step_size, steps in ((0.01, max(int(300 * rho), 30)), (rho / 10, 100), (rho / 2, 40)):
            for seed in (0, 1):
                p = attacks.pgd_l2(model, x[pos], y[pos], rho, targets=r.target[pos], steps=steps,
                                   step_size=step_size, clamp=None, generator=torch.Generator().manual_seed(seed))
                z = logits(model, p.x_adv)
                idx = torch.arange(int(pos.sum()))
                margin = z[idx, y[pos]] - z[idx, r.target[pos]]
                assert bool((margin > 0).all()), margin.min().item()
                assert bool((margin >= r.dual_bound[pos] - 1e-9).all())
                assert not bool((p.pred == r.target[pos]).any())
    assert n_pos >= 10  # non-vacuity


@pytest.mark.parametrize("rho", [0.3, 0.6])
@pytest.mark.parametrize("name", list(SO_NETS))
def test_second_order_all_targets_picks_lowest_f(name, rho):
    model, x, y = so_net(name)
    B, C = len(y), logits(model, x).shape[1]
    ra = attacks.second_order(model, x, y, rho, targets="all")
    idx = torch.arange(B)
    per_f = torch.full((B, C), math.inf, dtype=DT)
    per_x = torch.zeros(B, C, x.shape[1], dtype=DT)
    per_dual = torch.full((B, C), math.inf, dtype=DT)
    for t in range(C):
        rows = (y != t).nonzero().squeeze(1)
        r = attacks.second_order(model, x[rows], y[rows], rho, targets=torch.full((len(rows),), t))
        z = logits(model, r.x_adv)
        per_f[rows, t] = z[torch.arange(len(rows)), y[rows]] - z[torch.arange(len(rows)), t]
        per_x[rows, t] = r.x_adv
        per_dual[rows, t] = r.dual_bound
    best = per_f.argmin(1)
    assert torch.equal(ra.target, best)
    z = logits(model, ra.x_adv)
    torch.testing.assert_close(ra.f, z[idx, y] - z[idx, ra.target], rtol=0, atol=1e-12)
    torch.testing.assert_close(ra.f, per_f.min(1).values, rtol=0, atol=1e-10)
    torch.testing.assert_close(ra.x_adv, per_x[idx, best], rtol=0, atol=1e-10)
    torch.testing.assert_close(ra.dual_bound, per_dual.min(1).values, rtol=0, atol=1e-10)
    assert torch.equal(ra.pred, z.argmax(1))
    # the runner-up attack is one of the candidates, so "all" is never less damaging
    rr = attacks.second_order(model, x, y, rho, targets="runner-up")
    assert bool((ra.f <= rr.f + 1e-10).all())


# ----------------------------------------------------------------------------------------------------------------
# verdicts in float64 (issue 11): a float32 attack's success flags are facts of the float64 function
# ----------------------------------------------------------------------------------------------------------------


def test_float32_attack_verdicts_are_float64_facts():
    """PGD (runner-up, all) and the second-order attack (runner-up, all) run in float32; every reported verdict is
    re-established here independently: a float64 forward of the same weights at the reported point."""
    import copy

    model64 = small_net("tanh", seed=0, scale=3.0)
    model32 = copy.deepcopy(model64).float()
    ref64 = copy.deepcopy(model32).double()  # the float32 weights, exactly, in float64
    x, y = points_in_box(model64, 40, 4, seed=4)
    x32 = x.float()
    broken = 0
    for rho in (0.3, 0.8):
        for targets in ("runner-up", "all"):
            for r in (attacks.pgd_l2(model32, x32, y, rho, targets=targets, generator=torch.Generator().manual_seed(1)),
                      attacks.second_order(model32, x32, y, rho, targets=targets)):
                xa = r.x_adv.to(DT)
                pred = logits(ref64, xa).argmax(1)
                assert torch.equal(r.pred, pred)
                assert torch.equal(r.robust, pred == y)
                if r.dual_bound is None:  # PGD: a break is a float64 point of the ball whose prediction is not y
                    assert r.x_adv.dtype == torch.float64
                    assert bool(((xa - x32.to(DT)).norm(dim=1) <= rho).all())
                    assert torch.equal(r.success, pred != y)
                    broken += int(r.success.sum())
                else:
                    assert r.dual_bound.dtype == torch.float64
                    assert torch.allclose(r.distance.to(DT), (xa - x32.to(DT)).norm(dim=1), rtol=1e-6)
    assert broken > 0  # the check is not vacuous


def test_verdict_pulls_a_rounded_point_back_into_the_ball():
    """A float32 point one ulp outside the ball, beyond a decision boundary that lies exactly on the sphere: float32
    arithmetic calls it broken, the float64 verdict (the point pulled back onto the sphere) does not."""
    rho = 1.0
    lin = torch.nn.Linear(2, 2)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[0.0, 0.0], [1.0, 0.0]]))
        lin.bias.copy_(torch.tensor([0.0, -rho]))  # z1 − z0 = x₀ − ρ: the boundary is the sphere's point (ρ, 0)
    x0 = torch.zeros(1, 2)
    y = torch.tensor([0])
    xa = torch.tensor([[torch.nextafter(torch.tensor(rho), torch.tensor(2.0)).item(), 0.0]])  # ρ + 1 ulp (float32)
    assert int(lin(xa).argmax(1)) == 1 and float(xa.norm()) > rho  # float32: "broken", outside the ball
    xa64, pred, t, f, dist, success = attacks._verdict64(lin, x0, xa, y, rho, (2,))
    assert float(dist[0]) <= rho and int(pred[0]) == 0 and not bool(success[0])
    assert float(f[0]) > 0 and int(t[0]) == 1
