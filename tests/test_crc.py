"""Tests for the CRC certificate (sorobust.certify.crc) against independent references.

References used here never come from the code under test:

* soundness: adversarial examples from PGD (untargeted, runner-up and every target class; several radii and step
  sizes, no clamping), from the second-order attack, and boundary points found by bisection along the segment from
  x0 to each adversarial example. A certificate above the distance of a point classified otherwise is unsound.
* exactness: on 2-D nets the exact distance to {z_y = z_t} is found by a dense polar search (first sign change on
  each ray, refined by bisection, then zoomed in angle around every near-optimal direction).
* zero curvature: a net whose activation is the identity is affine, so the distance is |f(x0)| / ‖∇f‖ with the
  gradient from the product of the weight matrices.
* ``mm``: an unvectorised per-point transcription of the reference ``newton_step_cert`` (paper.md §2.1) with
  gradients from torch.autograd.

Everything runs in float64.
"""

from __future__ import annotations

import functools
import math

import pytest
import torch

from sorobust import activations, attacks, curvature, models
from sorobust.certify import crc

DT = torch.float64
SOLVERS = ("kkt", "newton", "mm")
SLACK = 1e-9

# ----------------------------------------------------------------------------------------------------------------
# small nets (fixed seeds; weights scaled so that boundaries are curved and within reach of the test points)
# ----------------------------------------------------------------------------------------------------------------

# name: (kind, activation, depth, seed, scale)
NET_SPECS = {
    "sigmoid-2": ("mlp", "sigmoid", 2, 1, 3.0),
    "sigmoid-3": ("mlp", "sigmoid", 3, 0, 4.0),
    "sigmoid-4": ("mlp", "sigmoid", 4, 2, 4.0),
    "tanh-2": ("mlp", "tanh", 2, 2, 1.5),
    "tanh-3": ("mlp", "tanh", 3, 2, 1.5),
    "tanh-4": ("mlp", "tanh", 4, 1, 1.5),
    "softplus-2": ("mlp", "softplus", 2, 2, 1.5),
    "softplus-3": ("mlp", "softplus", 3, 0, 2.0),
    "softplus-4": ("mlp", "softplus", 4, 0, 2.0),
    "cnn-tanh": ("cnn", "tanh", 2, 1, 1.5),
}
NETS = tuple(NET_SPECS)
N_POINTS = 16


pytestmark = pytest.mark.usefixtures("one_thread")


@functools.lru_cache(maxsize=None)
def net(name):
    """(model, x (B, D), y (B,)) with y the predicted labels (all points correctly classified)."""
    kind, act, depth, seed, scale = NET_SPECS[name]
    torch.manual_seed(seed)
    if kind == "mlp":
        model = models.mlp(depth, 16, act, in_dim=6, n_classes=4).double()
    else:
        model = models.cnn(channels=2, kernel=3, stride=1, activation=act, in_shape=(1, 7, 7), n_classes=3).double()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(scale)
    g = torch.Generator().manual_seed(100 + seed)
    if kind == "mlp":
        x = torch.randn(N_POINTS, 6, dtype=DT, generator=g)
    else:
        x = torch.rand(N_POINTS, 49, dtype=DT, generator=g)
    with torch.no_grad():
        y = model(x).argmax(1)
    return model, x, y


def logits(model, x):
    with torch.no_grad():
        return model(x)


def indep_runner_up(z, y):
    """Class with the largest logit other than y (independent of sorobust.certify.crc.runner_up)."""
    out = []
    for i in range(z.shape[0]):
        best, arg = -math.inf, -1
        for c in range(z.shape[1]):
            if c != int(y[i]) and float(z[i, c]) > best:
                best, arg = float(z[i, c]), c
        out.append(arg)
    return torch.tensor(out)


@functools.lru_cache(maxsize=None)
def cert(name, solver="kkt", targets="all", curv="global"):
    model, x, y = net(name)
    return crc(model, x, y, targets=targets, curvature=curv, solver=solver)


# ----------------------------------------------------------------------------------------------------------------
# the attack pool: closest points found with z_c ≥ z_y, per (point, class)
# ----------------------------------------------------------------------------------------------------------------


def _bisect_segment(model, x0, xa, y, c, iters=60):
    """For each row, bisect on s ∈ [0, 1] along x0 + s(xa − x0) for the predicate z_c ≥ z_y (false at s = 0, true at
    s = 1); returns the points at the true end (the predicate re-checked there)."""
    lo = torch.zeros(x0.shape[0], dtype=DT)
    hi = torch.ones(x0.shape[0], dtype=DT)
    idx = torch.arange(x0.shape[0])
    for _ in range(iters):
        mid = (lo + hi) / 2
        z = logits(model, x0 + mid[:, None] * (xa - x0))
        hit = z[idx, c] >= z[idx, y]
        hi = torch.where(hit, mid, hi)
        lo = torch.where(hit, lo, mid)
    return x0 + hi[:, None] * (xa - x0)


@functools.lru_cache(maxsize=None)
def attack_pool(name):
    """Returns (d, stats): d (B, C) the smallest ‖x − x0‖ over all points x found with z_c(x) ≥ z_y(x) (inf where
    none was found), and counts of what the attacks found."""
    model, x, y = net(name)
    B = x.shape[0]
    C = logits(model, x).shape[1]
    scale = float(cert(name, "kkt", "all", "global").certificate.median())
    # every (point, wrong class) pair, for the targeted runs
    pi = torch.arange(B).repeat_interleave(C)
    pc = torch.arange(C).repeat(B)
    keep = pc != y[pi]
    pi, pc = pi[keep], pc[keep]
    cands = []  # (point indices, adversarial points)
    n_misclassified = 0
    gen = torch.Generator().manual_seed(1234)

    def add(rows, xa):
        nonlocal n_misclassified
        cands.append((rows, xa))
        n_misclassified += int((logits(model, xa).argmax(1) != y[rows]).sum())

    all_rows = torch.arange(B)
    for rho in (1.0 * scale, 2.5 * scale, 6.0 * scale, 15.0 * scale):
        for step_size, steps in ((0.01, min(250, int(2.5 * rho / 0.01) + 20)), (rho / 8, 60), (rho / 3, 30)):
            if rho > 10 * scale and step_size == 0.01:
                continue
            for tg, rows in (("all", all_rows), ("runner-up", all_rows), (pc, pi)):
                r = attacks.pgd_l2(model, x[rows], y[rows], rho, targets=tg, steps=steps, step_size=step_size,
                                   clamp=None, generator=gen)
                add(rows, r.x_adv)
    for rho in (0.5 * scale, 1.0 * scale, 2.0 * scale, 4.0 * scale):
        for tg, rows in (("all", all_rows), ("runner-up", all_rows), (pc, pi)):
            r = attacks.second_order(model, x[rows], y[rows], rho, targets=tg)
            add(rows, r.x_adv)
    rows = torch.cat([r for r, _ in cands])
    xa = torch.cat([a for _, a in cands])
    z = logits(model, xa)
    # one candidate per (adversarial point, class c ≠ y with z_c ≥ z_y)
    ci, cc = (z >= z[torch.arange(len(rows)), y[rows]][:, None]).nonzero(as_tuple=True)
    keep = cc != y[rows[ci]]
    ci, cc = ci[keep], cc[keep]
    pts_i = rows[ci]
    raw = xa[ci]
    bis = _bisect_segment(model, x[pts_i], raw, y[pts_i], cc)
    d = torch.full((B, C), math.inf, dtype=DT)
    for pts in (raw, bis):
        zz = logits(model, pts)
        ok = zz[torch.arange(len(pts_i)), cc] >= zz[torch.arange(len(pts_i)), y[pts_i]]
        assert bool(ok.all())
        dist = (pts - x[pts_i]).norm(dim=1)
        for k in range(len(pts_i)):
            i, c = int(pts_i[k]), int(cc[k])
            d[i, c] = min(float(d[i, c]), float(dist[k]))
    stats = {"candidates": len(pts_i), "misclassified": n_misclassified,
             "points_with_adv": int(torch.isfinite(d).any(1).sum())}
    return d, stats


# ----------------------------------------------------------------------------------------------------------------
# soundness against attacks
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("curv", ["global", "local"])
@pytest.mark.parametrize("targets", ["all", "runner-up"])
@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("name", NETS)
def test_sound_against_attacks(name, solver, targets, curv):
    model, x, y = net(name)
    d, stats = attack_pool(name)
    B = x.shape[0]
    # non-vacuity: the attacks reach another class for most points, with many adversarial examples
    assert stats["points_with_adv"] >= B * 3 // 4, stats
    assert stats["misclassified"] >= 5 * B, stats
    r = cert(name, solver, targets, curv)
    assert bool((r.certificate >= 0).all())
    if targets == "all":
        bound = d.min(1).values  # any point where another class ties or beats y
    else:
        ru = indep_runner_up(logits(model, x), y)
        assert torch.equal(r.target, ru)
        bound = d[torch.arange(B), ru]  # points reaching the runner-up class
    checked = torch.isfinite(bound)
    assert int(checked.sum()) >= B // 2
    viol = checked & (r.certificate > bound + SLACK)
    assert not bool(viol.any()), (
        f"{int(viol.sum())} unsound certificates: cert={r.certificate[viol].tolist()} "
        f"adversarial distance={bound[viol].tolist()}")


# ----------------------------------------------------------------------------------------------------------------
# exact distances on 2-D nets by dense polar search
# ----------------------------------------------------------------------------------------------------------------

# name: (activation, n_classes, seed, fc1 scale, fc2 scale)
TOY_SPECS = {
    "toy-sigmoid-2": ("sigmoid", 2, 3, 5.0, 6.0),
    "toy-softplus-2": ("softplus", 2, 3, 3.0, 2.0),
    "toy-tanh-2": ("tanh", 2, 2, 3.0, 2.0),
    "toy-tanh-3": ("tanh", 3, 3, 3.0, 2.0),
}


@functools.lru_cache(maxsize=None)
def toy(name):
    act, C, seed, s1, s2 = TOY_SPECS[name]
    torch.manual_seed(seed)
    model = models.mlp(2, 16, act, in_dim=2, n_classes=C).double()
    with torch.no_grad():
        model.fc1.weight.mul_(s1)
        model.fc1.bias.mul_(s1)
        model.fc2.weight.mul_(s2)
        model.fc2.bias.zero_()
    g = torch.Generator().manual_seed(7)
    pool = (torch.rand(600, 2, dtype=DT, generator=g) * 2 - 1) * 1.5
    z = logits(model, pool)
    yp = z.argmax(1)
    top2 = z.topk(2, dim=1).values
    margin = top2[:, 0] - top2[:, 1]
    pick = []
    for c in range(C):
        idx = (yp == c).nonzero().squeeze(1)
        near = idx[margin[idx].argsort()[:4]]  # close to a boundary: where primal = dual is likely
        rest = idx[~torch.isin(idx, near)]
        pick += near.tolist() + rest[:2].tolist()
    x = pool[pick]
    return model, x, yp[pick]


def _polar(th):
    return torch.stack([th.cos(), th.sin()], -1)


def _first_crossing(model, x0, y, t, dirs, rmax, J):
    """Per direction u, the smallest r ∈ (0, rmax] (to grid resolution, then bisection) with z_t ≥ z_y at x0 + r u;
    inf if the grid sees none. Each returned r is a verified point of {z_t ≥ z_y}."""
    n = dirs.shape[0]
    r = rmax * torch.arange(1, J + 1, dtype=DT) / J
    r = r.expand(n, J)
    z = logits(model, (x0 + r[..., None] * dirs[:, None, :]).reshape(-1, 2)).reshape(n, J, -1)
    neg = z[..., t] >= z[..., y]
    has = neg.any(1)
    j = neg.to(DT).argmax(1)
    hi = r.gather(1, j[:, None]).squeeze(1)
    lo = torch.where(j > 0, r.gather(1, (j - 1).clamp(min=0)[:, None]).squeeze(1), torch.zeros(n, dtype=DT))
    for _ in range(55):
        mid = (lo + hi) / 2
        zz = logits(model, x0 + mid[:, None] * dirs)
        ng = zz[:, t] >= zz[:, y]
        hi = torch.where(ng, mid, hi)
        lo = torch.where(ng, lo, mid)
    zz = logits(model, x0 + hi[:, None] * dirs)
    assert bool((zz[:, t] >= zz[:, y])[has].all())
    return torch.where(has, hi, torch.full_like(hi, math.inf))


def dense_boundary_distance(model, x0, y, t, R=4.0, K=1024, J=200, zooms=8):
    """Distance from x0 to {z_y = z_t} by dense polar search (an upper bound attained by a verified point; accurate
    to ~1e-12 when the search sees the optimal basin). inf if no crossing within R."""
    th = torch.arange(K, dtype=DT) * (2 * math.pi / K)
    r = _first_crossing(model, x0, y, t, _polar(th), R, J)
    best = float(r.min())
    if not math.isfinite(best):
        return math.inf
    cands = ((r <= r.roll(1)) & (r <= r.roll(-1)) & (r <= best * 1.05 + 1e-3)).nonzero().squeeze(1)
    out = best
    for k in cands.tolist():
        tc, rc, width = float(th[k]), float(r[k]), 2 * math.pi / K
        for _ in range(zooms):
            ths = tc + torch.linspace(-width, width, 21, dtype=DT)
            rr = _first_crossing(model, x0, y, t, _polar(ths), 1.2 * rc, 200)
            j = int(rr.argmin())
            if not math.isfinite(float(rr[j])):
                break
            tc, rc = float(ths[j]), float(rr[j])
            width /= 10
        out = min(out, rc)
    return out


@functools.lru_cache(maxsize=None)
def toy_exact(name):
    """dist[i, t]: dense-search distance from x_i to {z_y = z_t} (nan for t = y)."""
    model, x, y = toy(name)
    C = TOY_SPECS[name][1]
    dist = torch.full((x.shape[0], C), math.nan, dtype=DT)
    for i in range(x.shape[0]):
        for t in range(C):
            if t != int(y[i]):
                dist[i, t] = dense_boundary_distance(model, x[i], int(y[i]), t)
    return dist


@pytest.mark.parametrize("curv", ["global", "local"])
@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("name", list(TOY_SPECS))
def test_2d_exact_distance(name, solver, curv):
    model, x, y = toy(name)
    C = TOY_SPECS[name][1]
    dist = toy_exact(name)
    # every (point, wrong class) problem in one call, the target given as a tensor
    pi = torch.arange(len(y)).repeat_interleave(C)
    pt = torch.arange(C).repeat(len(y))
    keep = pt != y[pi]
    pi, pt = pi[keep], pt[keep]
    r = crc(model, x[pi], y[pi], targets=pt, solver=solver, curvature=curv)
    assert torch.equal(r.target, pt)
    ex = dist[pi, pt]
    assert bool(torch.isfinite(ex).all())
    assert bool((r.certificate <= ex + SLACK).all()), (r.certificate - ex).max().item()
    e = r.exact
    assert bool(((r.certificate - ex).abs()[e] <= 1e-5).all()), (r.certificate - ex).abs()[e].max().item()
    n_exact, n_checked = int(e.sum()), len(pi)
    # targets="all": the minimum over targets, ≤ the nearest boundary, exact when flagged so
    ra = crc(model, x, y, targets="all", solver=solver, curvature=curv)
    dmin = torch.nan_to_num(dist, nan=math.inf).min(1).values
    assert bool((ra.certificate <= dmin + SLACK).all())
    assert bool(((ra.certificate - dmin).abs()[ra.exact] <= 1e-5).all())
    # non-vacuity: primal = dual for a good share of the (point, target) problems
    assert n_exact >= max(3, n_checked // 5), (n_exact, n_checked)


# ----------------------------------------------------------------------------------------------------------------
# zero curvature: identity activation ⇒ affine net ⇒ certificate = |f(x0)| / ‖∇f‖
# ----------------------------------------------------------------------------------------------------------------

IDENTITY = activations.Activation("identity", fn=lambda z: z, d1=torch.ones_like, d2=torch.zeros_like, g=1.0,
                                  h_lo=0.0, h_hi=0.0, crit1=(), crit2=())


@functools.lru_cache(maxsize=None)
def linear_net(depth):
    torch.manual_seed(11 + depth)
    model = models.mlp(depth, 12, "tanh", in_dim=5, n_classes=4).double()
    model.activation = IDENTITY
    x = torch.randn(10, 5, dtype=DT, generator=torch.Generator().manual_seed(3))
    y = logits(model, x).argmax(1)
    # effective affine map from the weight matrices
    W = torch.eye(5, dtype=DT)
    b = torch.zeros(5, dtype=DT)
    for layer in model.layers():
        W = layer.weight.detach() @ W
        b = layer.weight.detach() @ b + layer.bias.detach()
    return model, x, y, W, b


@pytest.mark.parametrize("curv", ["global", "local"])
@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("depth", [2, 3])
def test_zero_curvature_closed_form(depth, solver, curv):
    model, x, y, W, b = linear_net(depth)
    B, C = x.shape[0], W.shape[0]
    assert torch.allclose(logits(model, x), x @ W.T + b, atol=1e-12)
    closed = torch.full((B, C), math.inf, dtype=DT)
    for t in range(C):
        rows = (y != t).nonzero().squeeze(1)
        w = W[y[rows]] - W[t]
        f0 = (x[rows] * w).sum(1) + b[y[rows]] - b[t]
        closed[rows, t] = f0.abs() / w.norm(dim=1)
        r = crc(model, x[rows], y[rows], targets=torch.full((len(rows),), t), solver=solver, curvature=curv)
        assert bool((r.m == 0).all() and (r.M == 0).all())
        torch.testing.assert_close(r.certificate, closed[rows, t], rtol=1e-6, atol=1e-12)
    ra = crc(model, x, y, targets="all", solver=solver, curvature=curv)
    torch.testing.assert_close(ra.certificate, closed.min(1).values, rtol=1e-6, atol=1e-12)
    assert torch.equal(ra.target, closed.argmin(1))


# ----------------------------------------------------------------------------------------------------------------
# structural properties
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("curv", ["global", "local"])
@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("name", NETS)
def test_all_targets_at_most_runner_up(name, solver, curv):
    ra = cert(name, solver, "all", curv)
    rr = cert(name, solver, "runner-up", curv)
    assert bool((ra.certificate <= rr.certificate + SLACK * (1 + rr.certificate)).all()), \
        (ra.certificate - rr.certificate).max().item()


@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("name", NETS)
def test_local_at_least_global(name, solver):
    for targets in ("all", "runner-up"):
        g = cert(name, solver, targets, "global")
        loc = cert(name, solver, targets, "local")
        assert bool((loc.certificate >= g.certificate - SLACK).all()), (g.certificate - loc.certificate).max().item()


@pytest.mark.parametrize("curv", ["global", "local"])
def test_sound_certificate_vs_reference_value(curv):
    """sqrt(2 max(0, L − ‖r‖²/2μ)) ≤ sqrt(2 max(0, L)) (also for the ball-restricted bound, a minimum of the
    quadratic model that is ≤ its value L at x): the sound value never exceeds the reference's, when converged."""
    bad = []
    for name in NETS:
        for solver in SOLVERS:
            for targets in ("all", "runner-up"):
                r = cert(name, solver, targets, curv)
                assert bool((r.certificate >= 0).all())
                c = r.converged
                assert int(c.sum()) >= len(c) // 2
                excess = (r.certificate - r.certificate_reference)[c]
                if bool((excess > SLACK).any()):
                    bad.append(f"{name}/{solver}/{targets}: {int((excess > SLACK).sum())} points, "
                               f"max excess {excess.max().item():.3g}")
    assert not bad, "certificate > certificate_reference on converged points: " + "; ".join(bad)


@pytest.mark.parametrize("curv", ["global", "local"])
def test_reported_fields_consistent(curv):
    """The documented meaning of the per-point fields, recomputed from the model at the reported x_star: f = z_y − z_t
    there, certificate_reference = sqrt(max(0, ‖x* − x0‖² + 2ηf)) (CRCResult: "the reference code's value ... for
    the same target"), and for kkt/newton residual = ‖x* − x0 + η∇f(x*)‖."""
    bad = []
    for name in ("sigmoid-2", "tanh-3", "softplus-4", "cnn-tanh"):
        model, x, y = net(name)
        B = x.shape[0]
        for solver in SOLVERS:
            for targets in ("all", "runner-up"):
                r = cert(name, solver, targets, curv)
                xs = r.x_star.detach().clone().requires_grad_(True)
                z = model(xs)
                f = z[torch.arange(B), y] - z[torch.arange(B), r.target]
                (g,) = torch.autograd.grad(f.sum(), xs)
                f = f.detach()
                torch.testing.assert_close(r.f, f, rtol=0, atol=1e-12)
                d = r.x_star - x
                ref = torch.sqrt(((d * d).sum(1) + 2 * r.eta * f).clamp(min=0))
                err = (r.certificate_reference - ref).abs()
                if bool((err > 1e-10 * (1 + ref)).any()):
                    bad.append(f"{name}/{solver}/{targets}: {int((err > 1e-10 * (1 + ref)).sum())} points, "
                               f"max |certificate_reference − sqrt(‖x*−x0‖²+2ηf)| = {err.max().item():.3g}")
                if solver != "mm":  # mm: the reference's residual uses the previous iterate's gradient
                    res = (d + r.eta[:, None] * g).norm(dim=1)
                    if curv == "global":
                        torch.testing.assert_close(r.residual, res, rtol=1e-6, atol=1e-12)
    assert not bad, "; ".join(bad)


@pytest.mark.parametrize("targets", ["all", "runner-up"])
@pytest.mark.parametrize("name", NETS)
def test_kkt_at_least_mm_and_cheaper(name, targets):
    k = cert(name, "kkt", targets, "global")
    m = cert(name, "mm", targets, "global")
    assert bool((k.certificate >= m.certificate - 1e-6).all()), (m.certificate - k.certificate).max().item()
    assert bool((k.iterations < m.iterations).all())


@pytest.mark.parametrize("curv", ["global", "local"])
@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("name", ["tanh-2", "sigmoid-3"])
def test_misclassified_points_get_zero(name, solver, curv):
    model, x, y = net(name)
    C = logits(model, x).shape[1]
    wrong = (y + 1) % C
    for targets in ("all", "runner-up", logits(model, x).argmax(1)):
        r = crc(model, x, wrong, targets=targets, solver=solver, curvature=curv)
        assert torch.equal(r.certificate, torch.zeros_like(r.certificate))
        assert not bool(r.exact.any())
    # mixed batch: only the mislabelled rows are zero
    mixed = y.clone()
    mixed[::2] = wrong[::2]
    r = crc(model, x, mixed, targets="all", solver=solver, curvature=curv)
    assert bool((r.certificate[::2] == 0).all())
    assert bool((r.certificate[1::2] > 0).all())


# ----------------------------------------------------------------------------------------------------------------
# mm reproduces the reference newton_step_cert step for step
# ----------------------------------------------------------------------------------------------------------------


def reference_newton_step_cert(model, x0, y, t, m_ref, M, outer=30, inner=20):
    """paper.md §2.1, per point, reference sign convention (m_ref = |m_paper| > 0); gradients by autograd."""

    def margin(x):
        z = model(x.unsqueeze(0))[0]
        return z[y] - z[t]

    def grad(x):
        x = x.detach().clone().requires_grad_(True)
        (g,) = torch.autograd.grad(margin(x), x)
        return g.detach()

    eta_min = -1.0 / M * 0.0
    eta_max = 1.0 / m_ref
    eta = (eta_min + eta_max) / 2
    x = x0.clone()
    g = None
    f = None
    for _ in range(outer):
        for _ in range(inner):
            g = grad(x)
            x = -(eta * g - eta * M * x - x0) / (1 + eta * M)
        with torch.no_grad():
            f = float(margin(x))
        if f > 0:
            eta_min = eta
        else:
            eta_max = eta
        eta = (eta_min + eta_max) / 2
    dist_sqrd = float(((x - x0) ** 2).sum()) + 2 * eta * f
    lower_bound = math.sqrt(max(dist_sqrd, 0.0))
    grad_norm = float((eta * g + (x - x0)).norm())
    return x, eta, lower_bound, grad_norm


@pytest.mark.parametrize("name", ["tanh-2", "sigmoid-3", "softplus-4", "cnn-tanh"])
def test_mm_matches_reference_transcription(name):
    model, x, y = net(name)
    z = logits(model, x)
    ru = indep_runner_up(z, y)
    pts = [0, 5, 11]
    r = crc(model, x[pts], y[pts], targets="runner-up", solver="mm")
    m, M = curvature.bounds(model, y[pts], ru[pts])
    for k, i in enumerate(pts):
        m_ref, M_ref = -float(m[k]), float(M[k])
        assert m_ref > 0
        xr, eta, lb, gn = reference_newton_step_cert(model, x[i], int(y[i]), int(ru[i]), m_ref, M_ref)
        assert int(r.target[k]) == int(ru[i])
        torch.testing.assert_close(r.x_star[k], xr, rtol=1e-10, atol=1e-12)
        assert float(r.eta[k]) == pytest.approx(eta, rel=1e-10)
        assert float(r.certificate_reference[k]) == pytest.approx(lb, rel=1e-10)
        assert float(r.residual[k]) == pytest.approx(gn, rel=1e-10, abs=1e-14)
        assert bool(r.converged[k]) == (gn < 1e-5)
        # the sound certificate at the final iterate, with the gradient at the final x
        xs = xr.clone().requires_grad_(True)
        zz = model(xs.unsqueeze(0))[0]
        f = zz[int(y[i])] - zz[int(ru[i])]
        (gf,) = torch.autograd.grad(f, xs)
        d = xr - x[i]
        L = 0.5 * float(d @ d) + eta * float(f.detach())
        res = d + eta * gf
        mu = 1 + eta * float(m[k])
        sound = math.sqrt(2 * max(0.0, L - float(res @ res) / (2 * mu)))
        assert float(r.certificate[k]) >= sound - 1e-12
        assert float(r.certificate[k]) <= lb + SLACK
