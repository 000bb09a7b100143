"""Attacks: the curvature-based second-order attack (Theorem 2, Definition 2) and PGD-L2.

**Second-order attack** (paper.md §1.2, §2.2). For f = z_y − z_t and radius ρ the primal is
p* = min_{‖x−x0‖≤ρ} f(x); its dual function d(η) = min_x f(x) + (η/2)(‖x − x0‖² − ρ²) is convex in x for
η ≥ −m (Theorem 2), and if the dual solution x* has ‖x* − x0‖ = ρ, primal = dual: x* is the worst point of
the ball ("attack success", paper.md §3.3). The solver is the reference code's ``newton_step``: bisection on
η ∈ [−m, −m + 1000] (30 steps) with 10 majorisation–minimisation steps x ← (M x + η x0 − ∇f(x)) / (M + η) each,
increasing η while ‖x − x0‖ > ρ. No projection or clamping, as in the reference: x* lives in R^D.

Weak duality also gives a certificate for free: for η ≥ 0, min_{‖x−x0‖≤ρ} f ≥ d(η) ≥ φ(x) − ‖∇φ(x)‖²/(2μ) with
μ = η + m > 0 the strong-convexity modulus; ``dual_bound`` reports it (> 0 proves no point of the ball reaches t).

The second-order attack reads its ``model`` through :func:`sorobust.models.as_network` (the package's nets or a
user's ``nn.Sequential`` with a smooth activation). PGD and AutoAttack need no layer structure: they run the
module's own forward on inputs of the shape of ``x`` (flat or images), so any module is attacked as it is.

**PGD-L2** as the reference evaluates it (``adversarial_attack(..., 'L2')``, paper.md §2.5): targeted at the
runner-up (maximise z_t − z_y), ``int(200ρ)`` steps of 0.01 along the normalised gradient, start at
x0 + 0.01·N(0, I), projection onto the ℓ2 ball, clamping to [0, 1]. The reference counts a point robust when
the attacked prediction is not the target (``robust_reference``); ``robust`` is the stricter prediction = y.
``pgd_l2(..., targets="all")`` is the untargeted variant: it maximises max_{j≠y} z_j − z_y.

**Verdicts in float64** (issue 11: a success flag must not rest on rounding). Whatever dtype an attack runs in, its
final verdict (prediction, margin f, distance, success, the dual bound) is evaluated in float64 on a float64 copy
of the weights (:func:`_verdict64`); a float32 iterate that rounding left outside the ball by ~10⁻⁷ of ρ is first
pulled back onto the sphere, so a reported break is a float64 point at distance ≤ ρ whose float64 prediction is
not y, and ``robust`` is an upper bound on the robust accuracy at ρ.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from . import curvature as curv
from . import models, vocab
from .certify.crc import _model64, runner_up


@dataclass
class AttackResult:
    """Per-point attack results (B,) unless noted.

    Attributes:
        x_adv: (B, D) attacked inputs: for PGD and AutoAttack with the float64 verdict, the float64 point the
            verdict is about.
        pred: predicted class at x_adv.
        target: the attacked class.
        f: z_y − z_t at x_adv.
        distance: ‖x_adv − x0‖₂.
        success: second-order attack: ‖x* − x0‖ = ρ within tolerance (primal = dual, Theorem 2);
            PGD: the prediction changed away from y.
        robust: the prediction at x_adv is still y.
        robust_reference: the prediction at x_adv is not the target (the reference's count).
        dual_bound: second-order attack only: a sound lower bound on min_{‖x−x0‖≤ρ} f (None for PGD).
        eta: second-order attack only: the final dual variable.
    """

    x_adv: torch.Tensor
    pred: torch.Tensor
    target: torch.Tensor
    f: torch.Tensor
    distance: torch.Tensor
    success: torch.Tensor
    robust: torch.Tensor
    robust_reference: torch.Tensor
    dual_bound: torch.Tensor | None = None
    eta: torch.Tensor | None = None


def _targets(logits, y, targets):
    if isinstance(targets, torch.Tensor):
        return targets
    if targets == "runner-up":
        return runner_up(logits, y)
    raise ValueError(f"unknown targets '{targets}'")


def second_order(model, x: torch.Tensor, y: torch.Tensor, rho: float, targets="runner-up",
                 bounds_cache: curv.CurvatureBounds | None = None, outer: int = 30, inner: int = 10,
                 eta_span: float = 1000.0, tol: float = 1e-4, solver: str = "mm", max_iter: int = 12,
                 cg_iter: int = 10, verify: bool = True) -> AttackResult:
    """Curvature-based attack of Definition 2, batched over x (B, …).

    Solvers: ``"mm"`` is the reference code's ``newton_step`` (``outer`` × ``inner`` majorisation–minimisation
    steps with bisection on η). ``"kkt"`` is Newton's method on the optimality system
    ∇f(x) + η(x − x0) = 0, ½(‖x − x0‖² − ρ²) = 0 in (x, η) jointly, with (H + ηI)[u v] = [x − x0, ∇ₓφ] solved by
    conjugate gradients on HVPs, η kept ≥ −m (where the dual is convex, Theorem 2), started from the gradient
    step x0 − ρ∇f/‖∇f‖; ``max_iter`` inexact Newton steps at most (see :func:`_attack_kkt`).

    Args:
        targets: ``"runner-up"`` (reference), a (B,) tensor, or ``"all"`` (attack every wrong class and keep the
            one with the lowest f(x*)).
        tol: tolerance of the success test |‖x* − x0‖ − ρ| ≤ tol (paper.md §2.2 suggests 1e-4; the default).
        verify: evaluate the verdict (prediction, distance, dual bound) in float64 (module docstring); training,
            which only needs x*, passes False and gets them in the model's dtype.

    ``model``: any network :func:`sorobust.models.as_network` reads, with a twice-differentiable activation.
    """
    model = models.as_network(model, models.input_shape_of(x))
    model.require_smooth()
    B = x.shape[0]
    x0 = x.flatten(1).to(next(model.parameters()).dtype)
    cb = bounds_cache if bounds_cache is not None else curv.CurvatureBounds(model)
    with torch.no_grad():
        logits = model(x0)
    if isinstance(targets, str) and targets == "all":
        C = logits.shape[1]
        allc = torch.arange(C, device=y.device).expand(B, C)
        tt = allc[allc != y.reshape(B, 1)].reshape(B, C - 1)
        runs = [second_order(model, x0, y, rho, tt[:, j], cb, outer, inner, eta_span, tol, solver, max_iter, cg_iter,
                             verify)
                for j in range(C - 1)]
        fs = torch.stack([r.f for r in runs], 1)
        k = fs.argmin(1)
        pick = lambda name: torch.stack([getattr(r, name) for r in runs], 1)[torch.arange(B, device=y.device), k]  # noqa: E731
        return AttackResult(
            x_adv=torch.stack([r.x_adv for r in runs], 1)[torch.arange(B, device=y.device), k], pred=pick("pred"),
            target=pick("target"), f=pick("f"), distance=pick("distance"), success=pick("success"),
            robust=torch.stack([r.robust for r in runs], 1).all(1),
            robust_reference=pick("robust_reference"),
            dual_bound=torch.stack([r.dual_bound for r in runs], 1).min(1).values, eta=pick("eta"))
    t = _targets(logits, y, targets)
    m64, M = cb.global_(y, t)  # sound float64 bounds
    dt = x0.dtype
    m, M = m64.to(x0.device, dt), M.to(x0.device, dt)
    am = -m  # the reference's m = |m|
    if solver == "kkt":
        with torch.no_grad():
            xk, eta = _attack_kkt(model, x0, y, t, rho, am, max_iter, cg_iter)
        return _attack_result(model, x0, xk, eta, y, t, m64, rho, tol, verify)
    if solver != "mm":
        raise ValueError(f"unknown attack solver '{solver}'; expected mm or kkt")
    with torch.no_grad():
        eta_min, eta_max = am.clone(), am + eta_span
        eta = (eta_min + eta_max) / 2
        xk = x0.clone()
        Mc = M.unsqueeze(-1)
        for _ in range(outer):
            for _ in range(inner):
                g = curv.margin_state(model, xk, y, t).grad
                e = eta.unsqueeze(-1)
                xk = -(g - Mc * xk - e * x0) / (Mc + e)
            norm = (xk - x0).norm(dim=1)
            ge = norm > rho
            eta_min = torch.where(ge, eta, eta_min)
            eta_max = torch.where(ge, eta_max, eta)
            eta = (eta_min + eta_max) / 2
    return _attack_result(model, x0, xk, eta, y, t, m64, rho, tol, verify)


def _attack_kkt(model, x0, y, t, rho, am, max_iter, cg_iter, tol_r=1e-5, cg_tol=1e-3):
    """Newton–KKT solver of Definition 2 (see :func:`second_order`); returns (x*, η).

    Inexact Newton: CG stops at a relative residual ``cg_tol``; the loop stops once ‖∇f + η(x − x0)‖ ≤
    ``tol_r``·(1 + ‖∇f‖) and ½|‖x − x0‖² − ρ²| ≤ 10⁻⁶ρ² (or the minimum lies inside the ball)."""
    from .certify.crc import _cg

    st = curv.margin_state(model, x0, y, t)
    g = st.grad
    gn = g.norm(dim=1, keepdim=True).clamp(min=1e-30)
    x = x0 - rho * g / gn
    eta_lo = am * (1 + 1e-6) + 1e-12
    eta = torch.maximum(gn.squeeze(1) / rho, eta_lo)
    active = torch.ones(x0.shape[0], dtype=torch.bool, device=x0.device)
    for _ in range(max_iter):
        idx = active.nonzero().squeeze(1)
        if idx.numel() == 0:
            break
        xa, ea = x[idx], eta[idx]
        st = curv.margin_state(model, xa, y[idx], t[idx])
        d = xa - x0[idx]
        r = st.grad + ea.unsqueeze(-1) * d
        c = 0.5 * ((d * d).sum(1) - rho ** 2)
        scale = 1 + st.grad.norm(dim=1)
        inside = (ea <= eta_lo[idx] * (1 + 1e-9)) & (c < 0)  # the minimum lies inside the ball
        done = (r.norm(dim=1) <= tol_r * scale) & ((c.abs() <= 1e-6 * rho ** 2) | inside)
        active[idx[done]] = False
        keep = ~done
        if not bool(keep.any()):
            break
        idx, xa, ea, d, r, c = idx[keep], xa[keep], ea[keep], d[keep], r[keep], c[keep]
        st = st.take(keep)

        def apply_A(v, st=st, ea=ea):
            return st.hvp(v) + ea.unsqueeze(-1) * v

        sol, _ = _cg(apply_A, torch.stack([d, r]), cg_iter, cg_tol)
        u, v = sol[0], sol[1]
        du = (d * u).sum(1)
        du = torch.where(du.abs() > 1e-30, du, torch.full_like(du, 1e-30))
        new_eta = ea + (c - (d * v).sum(1)) / du
        new_eta = torch.minimum(torch.maximum(new_eta, torch.maximum(eta_lo[idx], 0.1 * ea)), 10 * ea)
        x[idx] = xa - v - u * (new_eta - ea).unsqueeze(-1)
        eta[idx] = new_eta
    return x, eta


def _float64_copy(model):
    """A float64 copy of ``model`` holding exactly its weights (float32 weights are exactly representable)."""
    if all(p.dtype == torch.float64 for p in model.parameters()):
        return model
    return copy.deepcopy(model).to(torch.float64).eval()


def _verdict64(model, x0, xa, y, rho, shape, t=None, pull_back=True):
    """An attack's verdict at ``xa`` (B, D), evaluated in float64 on a float64 copy of ``model`` (inputs fed in
    the shape ``shape`` of one point).

    If ``pull_back``, a point that (float32) rounding left outside the ball is pulled back onto the sphere, by
    1e-12 of ρ more, so that its float64 distance is ≤ ρ (PGD and AutoAttack project onto the ball; the
    second-order attack's x* is judged where it is). ``t``: the attacked class, or None for the best wrong class at
    the point (untargeted). Returns (x (float64), pred, t, f = z_y − z_t, distance, broken = pred ≠ y and
    distance ≤ ρ).
    """
    B = x0.shape[0]
    with torch.no_grad():
        x064 = x0.flatten(1).to(torch.float64)
        d = xa.flatten(1).to(torch.float64) - x064
        xa64 = xa.flatten(1).to(torch.float64)
        if pull_back:
            n = d.norm(dim=1, keepdim=True)
            out = n > rho
            d = torch.where(out, d * (rho / n * (1 - 1e-12)), d)
            xa64 = torch.where(out, x064 + d, xa64)
        dist = d.norm(dim=1)
        z = _float64_copy(model)(xa64.reshape(B, *shape))
        idx = torch.arange(B, device=y.device)
        if t is None:
            other = z.clone()
            other[idx, y] = -torch.inf
            t = other.argmax(1)
        pred = z.argmax(1)
        f = z[idx, y] - z[idx, t]
    return xa64, pred, t, f, dist, (pred != y) & (dist <= rho)


def _attack_result(model, x0, xk, eta, y, t, m64, rho, tol, verify=True):
    """Package a second-order attack's (x*, η) with its sound dual bound and success flag, evaluated in float64 on
    a float64 copy of the weights if ``verify`` (``m64``: the float64 curvature bound the dual's convexity rests
    on), else in the model's dtype."""
    wdt = torch.float64 if verify else x0.dtype
    net64 = model if x0.dtype == wdt else _model64(model)
    with torch.no_grad():
        x0_, xk_, eta_ = (v.to(wdt) for v in (x0, xk, eta))
        m_ = m64.to(x0.device, wdt)
        st = curv.margin_state(net64, xk_, y, t)
        d = xk_ - x0_
        phi = st.f + eta_ / 2 * ((d * d).sum(1) - rho ** 2)
        r = st.grad + eta_.unsqueeze(-1) * d
        mu = eta_ + m_
        dual = torch.where(mu > 0, phi - (r * r).sum(1) / (2 * mu.clamp(min=1e-300)), torch.full_like(phi, -torch.inf))
        pred = net64(xk_).argmax(1)
    dist = d.norm(dim=1)
    dt = x0.dtype
    return AttackResult(x_adv=xk, pred=pred, target=t, f=st.f.to(dt), distance=dist.to(dt),
                        success=(dist - rho).abs() <= tol, robust=pred == y, robust_reference=pred != t,
                        dual_bound=dual, eta=eta)


def pgd_l2(model, x: torch.Tensor, y: torch.Tensor, rho: float, targets="runner-up", steps: int | None = None,
           step_size: float = 0.01, init_std: float = 0.01, clamp: tuple | None = (0.0, 1.0),
           generator: torch.Generator | None = None, verify: bool = True) -> AttackResult:
    """ℓ2 PGD with the reference's schedule (``int(200ρ)`` steps of 0.01) and its random start.

    Args:
        targets: ``"runner-up"`` (reference, maximise z_t − z_y), a (B,) tensor, or ``"all"`` (untargeted:
            maximise max_{j≠y} z_j − z_y).
        clamp: box for the inputs (``None`` for none).
        generator: seeds the random start.
        verify: the verdict in float64 at the point pulled back into the ball (module docstring; ``x_adv`` is then
            that float64 point); training, which only needs the attacked inputs, passes False and gets the
            verdict and ``x_adv`` in the model's dtype.
    """
    B = x.shape[0]
    shape = x.shape[1:]
    dt = next(model.parameters()).dtype
    x0 = x.flatten(1).to(dt)
    steps = int(rho * 200) if steps is None else steps
    net = model

    def model(v):  # the module's own forward, on inputs shaped as x
        return net(v.reshape(B, *shape))

    with torch.no_grad():
        logits = model(x0)
    untargeted = isinstance(targets, str) and targets == "all"
    t = None if untargeted else _targets(logits, y, targets)
    idx = torch.arange(B, device=y.device)
    noise = torch.randn(x0.shape, generator=generator, dtype=dt).to(x0.device)
    xa = (x0 + init_std * noise).detach()
    for _ in range(steps):
        xa.requires_grad_(True)
        with torch.enable_grad():
            z = model(xa)
            if untargeted:
                other = z.clone()
                other[idx, y] = -torch.inf
                loss = (other.max(1).values - z[idx, y]).sum()
            else:
                loss = (z[idx, t] - z[idx, y]).sum()
            g = torch.autograd.grad(loss, xa)[0]
        with torch.no_grad():
            xa = xa + step_size * g / (g.norm(dim=1, keepdim=True) + 1e-10)
            d = xa - x0
            n = d.norm(dim=1, keepdim=True)
            d = torch.where(n > rho, d * rho / n, d)
            xa = x0 + d
            if clamp is not None:
                xa = xa.clamp(*clamp)
        xa = xa.detach()
    if verify:
        xa64, pred, t, f, dist, broken = _verdict64(net, x0, xa, y, rho, shape, None if untargeted else t)
        return AttackResult(x_adv=xa64, pred=pred, target=t, f=f, distance=dist, success=broken,
                            robust=~broken, robust_reference=pred != t)
    with torch.no_grad():
        z = model(xa)
        pred = z.argmax(1)
        if untargeted:
            other = z.clone()
            other[idx, y] = -torch.inf
            t = other.argmax(1)
        f = z[idx, y] - z[idx, t]
    return AttackResult(x_adv=xa, pred=pred, target=t, f=f, distance=(xa - x0).norm(dim=1), success=pred != y,
                        robust=pred == y, robust_reference=pred != t)


#: AutoAttack versions offered: ``standard`` (APGD-CE, APGD-T, FAB-T, Square: the published protocol) and ``apgd``
#: (APGD-CE and APGD-T only, the common cheaper subset; labelled as such wherever it is used)
AUTOATTACK_VERSIONS = {vocab.AAVersion.STANDARD: None, vocab.AAVersion.APGD: ["apgd-ce", "apgd-t"]}


class _ImageInput(torch.nn.Module):
    """Feeds AutoAttack's (B, C, H, W) images to a model in the shape of one of its inputs, ``shape`` (flat for
    the package's models given flat inputs)."""

    def __init__(self, model, shape):
        super().__init__()
        self.model, self.shape = model, tuple(shape)

    def forward(self, x):
        return self.model(x.reshape(x.shape[0], *self.shape))


def autoattack_l2(model, x: torch.Tensor, y: torch.Tensor, rho: float, version: str = "standard", seed: int = 0,
                  in_shape: tuple | None = None, batch_size: int = 500) -> AttackResult:
    """AutoAttack in ℓ2 (Croce & Hein, "Reliable evaluation of adversarial robustness with an ensemble of diverse
    parameter-free attacks", ICML 2020, arXiv 2003.01690) through ``pyautoattack``, the authors' maintained
    package: an untargeted all-class attack in the box [0, 1]^D (APGD-T attacks the top-9 other classes, i.e.
    every wrong class on MNIST).

    The attack runs in float32; its verdict is then re-established in float64 on a float64 copy of the weights
    (issue 11: a success flag must not rest on rounding): an example outside the ball by rounding is pulled back
    onto the sphere ‖x − x0‖₂ = ρ, and a point counts as broken only if the float64 prediction there differs from
    y and the float64 distance is ≤ ρ. So ``robust`` is an upper bound on the true robust accuracy (in the box, a
    subset of R^D, hence also above any certificate over R^D).

    Args:
        version: a key of :data:`AUTOATTACK_VERSIONS`.
        seed: AutoAttack's seed (its random restarts and Square's sampling).
        in_shape: image shape AutoAttack sees (its checks and Square use it); default the shape of x's images
            (B, C, H, W), else (1, 28, 28). The model itself gets its inputs in the shape of x.
    """
    import logging

    from pyautoattack import AutoAttack

    if version not in AUTOATTACK_VERSIONS:
        raise ValueError(f"unknown AutoAttack version '{version}'; one of {sorted(AUTOATTACK_VERSIONS)}")
    B = x.shape[0]
    shape = x.shape[1:]
    if in_shape is None:
        in_shape = tuple(shape) if len(shape) == 3 else (1, 28, 28)
    m32 = copy.deepcopy(model).to(torch.float32).eval()
    x0 = x.flatten(1)
    x32 = x0.to(torch.float32).reshape(B, *in_shape)
    kw = {"attacks": AUTOATTACK_VERSIONS[version], "version": "custom"} if AUTOATTACK_VERSIONS[version] else {}
    aa = AutoAttack(_ImageInput(m32, shape), norm="L2", eps=float(rho), seed=seed, device=x.device, **kw)
    aa.logger.setLevel(logging.WARNING)
    xa, _ = aa.run_standard_evaluation(x32, y, batch_size=batch_size)
    xa64, pred, t, f, dist, success = _verdict64(model, x0, xa, y, rho, shape)
    return AttackResult(x_adv=xa64, pred=pred, target=t, f=f, distance=dist, success=success,
                        robust=~success, robust_reference=~success)
