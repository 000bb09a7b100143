"""The Curvature-based Robustness Certificate (CRC): Theorem 1 and Definition 1 of Singla & Feizi.

For a correctly classified x0 with label y and a target t, f = z_y − z_t, f(x0) > 0, the primal problem is
p* = min_{f(x)=0} ½‖x − x0‖² (half the squared distance to the decision boundary between y and t). Its dual
function d(η) = min_x L(x, η), L(x, η) = ½‖x − x0‖² + η f(x), is a lower bound on p* for every η (weak
duality), and the inner problem is convex for −1/M ≤ η ≤ −1/m (Theorem 1; m ≤ 0 ≤ M bound ∇²f). The CRC is
sqrt(2 d(η*)) at the best η (Definition 1; paper.md §1.2, §2.1). When f(x*) = 0, primal = dual and the CRC is
the exact distance to the boundary.

**Soundness at every iterate.** A solver stops at some (x, η) that only approximately minimises L(·, η), and
L(x, η) ≥ d(η) over-estimates the dual. For 0 ≤ η < 1/|m| the inner problem is μ-strongly convex with
μ = 1 + η·m > 0, so d(η) ≥ L(x, η) − ‖∇ₓL(x, η)‖² / (2μ). This module reports
``certificate = sqrt(2·max(0, L − ‖∇ₓL‖²/(2μ)))``, the best such value over the iterates, which is a true lower
bound on the distance to {f = 0} whatever the solver did. The reference code's value sqrt(max(0, ‖x − x0‖² +
2ηf(x))) is reported too as ``certificate_reference`` (paper.md §6 item 4); it is not a bound in general.

**Targets.** ``targets="runner-up"`` certifies only against the class with the second-largest logit, the
reference protocol (paper.md §6 item 6). ``targets="all"`` takes the minimum over every wrong class: the distance
to the nearest point classified otherwise, the sound multi-class certificate and the default.

**Solvers.**

* ``"mm"``: the reference code's majorisation–minimisation (``newton_step_cert``, paper.md §2.1): bisection on
  η ∈ [0, 1/|m|] with 30 outer × 20 inner steps x ← (x0 + ηM x − η∇f(x)) / (1 + ηM), reproduced step for step,
  including its ``grad_norm < 1e-5`` convergence test.
* ``"newton"``: the slides' Newton step x ← x − (I + ηH)⁻¹ ∇ₓL with Hessian–vector products (paper.md §1.7),
  inside the same bisection on η, stopping early on a convergence test. (I + ηH)⁻¹ is applied by conjugate
  gradients rather than the slides' Neumann series, which diverges when η‖H‖ ≥ 1.
* ``"kkt"`` (default): Newton's method on the optimality system x − x0 + η∇f(x) = 0, f(x) = 0 in (x, η)
  jointly, with η kept inside [0, (1 − 10⁻⁷)/|m|] (10⁻⁶ in float32), the linear systems
  (I + ηH)[u v] = [∇f, ∇ₓL] solved by conjugate gradients on HVPs, and a stop once ‖∇ₓL‖ and |f| fall below
  tolerances (or η sits at its upper limit with f > 0, where the dual optimum is on the boundary and primal ≠
  dual, and the strong-convexity correction ‖∇ₓL‖²/(2μ) is negligible). It converges quadratically near the
  solution; the certificate is the sound bound above in any case.

**Networks.** ``model`` is read through :func:`sorobust.models.as_network`: the package's MLP and conv net, or a
user's ``nn.Sequential`` of Linear / Conv2d / Flatten layers with one smooth activation (Sigmoid, Tanh, Softplus),
any widths and convolutions; the input shape of a net that starts with a convolution is taken from image inputs
(B, C, H, W). The float64 re-evaluation below uses a float64 copy of that network, cached on the user's module.

**Local curvature** (``curvature="local"``): m, M are valid only on the ball ‖x − x0‖ ≤ r. The inner problem is
then solved over that ball, where L(·, η) is μ-strongly convex, and bounded below by minimising its strongly
convex quadratic model over the ball (a projection, in closed form). The resulting c(r) certifies
dist ≥ min(c(r), r); the radius r* = c(r*) is found by a short fixed-point search started from the global
certificate, so the local certificate is never below the global one.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from .. import curvature as curv
from .. import models, vocab

SOLVERS = vocab.values(vocab.Solver)
TARGETS = ("all", "runner-up")


@dataclass
class CRCResult:
    """Per-point CRC results (tensors of shape (B,) unless noted).

    Attributes:
        certificate: the sound certificate (min over the certified targets); 0 for misclassified points.
        certificate_reference: the reference code's value sqrt(max(0, ‖x−x0‖² + 2ηf)) for the same target.
        target: the target class attaining the minimum.
        eta: the dual variable η at the end.
        x_star: (B, D) the inner minimiser at the end.
        f: f(x*) for that target; ``exact`` when |f(x*)| is within tolerance (primal = dual, Theorem 1).
        residual: ‖∇ₓL(x*, η)‖ (the reference's ``grad_norm``).
        converged: whether the solver met its convergence test (``mm``: the reference's grad_norm < 1e-5).
        iterations: gradient/HVP evaluations spent on the point (summed over targets), in gradient units.
        m, M: the curvature bounds used for that target.
        time_s: wall time of the call (seconds), including the curvature bounds it had to compute.
    """

    certificate: torch.Tensor
    certificate_reference: torch.Tensor
    target: torch.Tensor
    eta: torch.Tensor
    x_star: torch.Tensor
    f: torch.Tensor
    residual: torch.Tensor
    exact: torch.Tensor
    converged: torch.Tensor
    iterations: torch.Tensor
    m: torch.Tensor
    M: torch.Tensor
    time_s: float = 0.0
    protocol: dict = field(default_factory=dict)

    def certified(self, correct: torch.Tensor, rho: float) -> torch.Tensor:
        """Certified at radius rho ⇔ correctly classified ∧ certificate > rho ∧ converged
        (:func:`sorobust.summaries.certified_at`)."""
        from ..summaries import certified_at

        return certified_at(correct, self.certificate, self.converged, rho)


def runner_up(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The class with the largest logit other than y (the reference's ``adversarial_targets(..., 'runner-up')``)."""
    masked = logits.clone()
    masked[torch.arange(len(y), device=y.device), y] = -torch.inf
    return masked.argmax(1)


def _tolerances(dtype):
    if dtype == torch.float64:
        return {"tol_r": 1e-10, "tol_f": 1e-10, "cg_tol": 1e-12, "tol_gap": 1e-14}
    return {"tol_r": 1e-5, "tol_f": 1e-5, "cg_tol": 1e-6, "tol_gap": 1e-7}


def _cg(apply_A, b, max_iter, tol):
    """Batched conjugate gradients for SPD systems A s = b, b of shape (..., N, D), one system per row.

    Returns the solution and the number of A-products spent. Systems that meet ‖r‖ ≤ tol·‖b‖ stop updating.
    """
    s = torch.zeros_like(b)
    r = b.clone()
    p = r.clone()
    rr = (r * r).sum(-1)
    stop = tol * tol * rr.clamp(min=1e-300)
    n = 0
    for _ in range(max_iter):
        active = rr > stop
        if not bool(active.any()):
            break
        Ap = apply_A(p)
        n += 1
        pAp = (p * Ap).sum(-1)
        ok = active & (pAp > 0)
        alpha = torch.where(ok, rr / torch.where(ok, pAp, torch.ones_like(pAp)), torch.zeros_like(rr))
        s = s + alpha.unsqueeze(-1) * p
        r = r - alpha.unsqueeze(-1) * Ap
        rr_new = (r * r).sum(-1)
        beta = torch.where(ok, rr_new / rr.clamp(min=1e-300), torch.zeros_like(rr))
        p = r + beta.unsqueeze(-1) * p
        rr = torch.where(ok, rr_new, torch.zeros_like(rr))
    return s, n


class _Problem:
    """N independent CRC problems (x0_i, y_i, t_i, m_i, M_i), with an optional ball constraint of radius r_i."""

    def __init__(self, model, x0, y, t, m, M, ball=None):
        self.model, self.x0, self.y, self.t = model, x0, y, t
        dt = x0.dtype
        self.m = m.to(dt)
        self.m64 = m.to(torch.float64)
        self.M = M.to(dt)
        self.ball = None if ball is None else ball.to(dt)
        self.evals = torch.zeros(x0.shape[0], dtype=torch.long, device=x0.device)

    def state(self, x, idx=None):
        if idx is None:
            return curv.margin_state(self.model, x, self.y, self.t)
        return curv.margin_state(self.model, x, self.y[idx], self.t[idx])

    def eta_limit(self, margin=None):
        """Upper end of the η range where the inner problem is strongly convex: (1 − margin)/|m| (∞ if m = 0).

        The margin (10⁻⁷ in float64, 10⁻⁶ in float32) keeps μ = 1 + ηm well away from 0, so the sound bound
        L − ‖∇L‖²/(2μ) stays usable when the dual optimum sits at the end of the range.
        """
        if margin is None:
            margin = 1e-7 if self.x0.dtype == torch.float64 else 1e-6
        am = -self.m
        return torch.where(am > 0, (1 - margin) / am.clamp(min=1e-300), torch.full_like(am, torch.inf))

    def lower_bound(self, x, eta, st):
        """Sound lower bound on d(η) at (x, η): L − ‖∇L‖²/(2μ), or its ball-restricted version.

        Evaluated in float64 whatever the model's dtype (μ = 1 + ηm may be ~10⁻⁶, where float32 would lose it);
        returns (bound in float64, ∇ₓL in the model's dtype).
        """
        f64 = torch.float64
        x64, x0, e = x.to(f64), self.x0.to(f64), eta.to(f64)
        d = x64 - x0
        L = 0.5 * (d * d).sum(-1) + e * st.f.to(f64)
        r = d + e.unsqueeze(-1) * st.grad.to(f64)
        mu = 1 + e * self.m64
        ok = mu > 0
        mu_s = torch.where(ok, mu, torch.ones_like(mu))
        if self.ball is None:
            lb = L - (r * r).sum(-1) / (2 * mu_s)
        else:
            # min over ‖y − x0‖ ≤ ρ of L + rᵀ(y − x) + μ/2‖y − x‖² (x must be inside the ball)
            step = _project_ball(x64 - r / mu_s.unsqueeze(-1), x0, self.ball.to(f64)) - x64
            lb = L + (r * step).sum(-1) + 0.5 * mu_s * (step * step).sum(-1)
        return torch.where(ok, lb, torch.full_like(lb, -torch.inf)), r.to(x.dtype)

    def project(self, x):
        return x if self.ball is None else _project_ball(x, self.x0, self.ball)


def _project_ball(x, x0, radius):
    """Euclidean projection of the rows of x onto the balls ‖· − x0‖ ≤ radius (radius (N,))."""
    d = x - x0
    nrm = d.norm(dim=-1, keepdim=True)
    r = radius.unsqueeze(-1)
    return x0 + d * torch.where(nrm > r, r / nrm.clamp(min=1e-300), torch.ones_like(nrm))


def _bracket_eta_hi(prob: _Problem, st0, hi):
    """Where m = 0 (no negative curvature) η has no upper limit; bracket the root of f(x(η)) by doubling."""
    inf = torch.isinf(hi)
    if not bool(inf.any()):
        return hi
    g2 = (st0.grad * st0.grad).sum(-1).clamp(min=1e-300)
    eta = torch.where(inf, 2 * st0.f / g2, hi)
    for _ in range(60):
        x = prob.x0 - eta.unsqueeze(-1) * st0.grad
        for _ in range(20):  # M-step majorisation with the (finite) M bound
            st = prob.state(x)
            x = (prob.x0 + eta.unsqueeze(-1) * (prob.M.unsqueeze(-1) * x - st.grad)) / (
                1 + eta * prob.M).unsqueeze(-1)
        f = prob.state(x).f
        grow = inf & (f > 0)
        if not bool(grow.any()):
            break
        eta = torch.where(grow, 2 * eta, eta)
    return torch.where(inf, eta, hi)


def _solve_mm(prob: _Problem, outer=30, inner=20):
    """The reference code's ``newton_step_cert``, step for step (paper.md §2.1, §6 items 1–5)."""
    x0 = prob.x0
    Mref = prob.M.unsqueeze(-1)
    st0 = prob.state(x0)
    eta_min = torch.zeros_like(prob.m)
    eta_max = 1 / (-prob.m)  # the reference's eta_max = 1/m (code m = |m|)
    eta_max = _bracket_eta_hi(prob, st0, eta_max)
    eta = (eta_min + eta_max) / 2
    x = x0.clone()
    g = st0.grad
    for _ in range(outer):
        for _ in range(inner):
            st = prob.state(x)
            g = st.grad
            e = eta.unsqueeze(-1)
            x = prob.project(-(e * g - e * Mref * x - x0) / (1 + e * Mref))
        f = prob.state(x).f
        ge = f > 0
        eta_min = torch.where(ge, eta, eta_min)
        eta_max = torch.where(ge, eta_max, eta)
        eta = (eta_min + eta_max) / 2
    prob.evals += outer * (inner + 1)
    d = x - x0
    ref_sq = (d * d).sum(-1) + 2 * eta * f
    cert_ref = torch.sqrt(ref_sq.clamp(min=0))
    grad_norm = (eta.unsqueeze(-1) * g + d).norm(dim=-1)  # g from the last inner step, as the reference
    stf = prob.state(x)
    lb, r = prob.lower_bound(x, eta, stf)
    prob.evals += 1
    return {"x": x, "eta": eta, "f": stf.f, "lb": lb, "residual": grad_norm, "cert_ref": cert_ref,
            "converged": grad_norm < 1e-5}


def _solve_kkt(prob: _Problem, max_iter=40, cg_iter=30, tol=None):
    """Newton on the KKT system of min ½‖x−x0‖² s.t. f(x) = 0, safeguarded in η (see module docstring)."""
    tol = tol or _tolerances(prob.x0.dtype)
    x0 = prob.x0
    N = x0.shape[0]
    st = prob.state(x0)
    f0, g0 = st.f, st.grad
    hi = prob.eta_limit()
    hi = _bracket_eta_hi(prob, st, hi)
    g2 = (g0 * g0).sum(-1).clamp(min=1e-300)
    eta = torch.minimum(f0 / g2, 0.5 * hi)
    x = prob.project(x0 - eta.unsqueeze(-1) * g0)
    best = torch.full((N,), -torch.inf, dtype=torch.float64, device=x0.device)
    out_x, out_eta = x.clone(), eta.clone()
    out_f = torch.zeros(N, dtype=x0.dtype, device=x0.device)
    out_res = torch.full((N,), torch.inf, dtype=x0.dtype, device=x0.device)
    converged = torch.zeros(N, dtype=torch.bool, device=x0.device)
    active = torch.ones(N, dtype=torch.bool, device=x0.device)
    prob.evals += 1
    for _ in range(max_iter):
        idx = active.nonzero().squeeze(1)
        if idx.numel() == 0:
            break
        xa, ea = x[idx], eta[idx]
        sub = _Sub(prob, idx)
        st = prob.state(xa, idx)
        lb, r = sub.lower_bound(xa, ea, st)
        res = r.norm(dim=-1)
        prob.evals[idx] += 1
        better = lb > best[idx]
        bi = idx[better]
        best[bi] = lb[better]
        out_x[bi], out_eta[bi], out_f[bi], out_res[bi] = xa[better], ea[better], st.f[better], res[better]
        scale = 1 + (xa - x0[idx]).norm(dim=-1)
        # dual optimum at the end of the η range (primal ≠ dual): converged once the strong-convexity correction
        # ‖∇L‖²/(2μ) of the sound bound is negligible, as μ = 1 + ηm is tiny there
        at_hi = (ea >= hi[idx] * (1 - 1e-9)) & (st.f > 0)
        gap = res.to(torch.float64) ** 2 / (2 * (1 + ea.to(torch.float64) * sub.m64).clamp(min=1e-300))
        at_hi = at_hi & (gap <= tol["tol_gap"] * scale.to(torch.float64) ** 2)
        done = (res <= tol["tol_r"] * scale) & ((st.f.abs() <= tol["tol_f"] * scale) | at_hi)
        if bool(done.any()):
            di = idx[done]
            converged[di] = True
            out_x[di], out_eta[di], out_f[di], out_res[di] = xa[done], ea[done], st.f[done], res[done]
            best[di] = torch.maximum(best[di], lb[done])
            active[di] = False
        keep = ~done
        if not bool(keep.any()):
            continue
        idx, xa, ea, r = idx[keep], xa[keep], ea[keep], r[keep]
        sub = _Sub(prob, idx)
        st = st.take(keep)
        g, f = st.grad, st.f

        def apply_A(v, st=st, ea=ea):
            return v + ea.unsqueeze(-1) * st.hvp(v)

        rhs = torch.stack([g, r])
        sol, n_cg = _cg(apply_A, rhs, cg_iter, tol["cg_tol"])
        prob.evals[idx] += 2 * n_cg
        u, v = sol[0], sol[1]
        gu = (g * u).sum(-1).clamp(min=1e-300)
        deta = (f - (g * v).sum(-1)) / gu
        new_eta = (ea + deta).clamp(min=0.0)
        new_eta = torch.minimum(new_eta, hi[idx])
        # keep η from jumping by more than a factor 10 in one step (globalisation)
        new_eta = torch.minimum(new_eta, 10 * ea + 1e-12 * hi[idx].clamp(max=1e12))
        new_eta = torch.maximum(new_eta, 0.1 * ea)
        dx = -v - u * (new_eta - ea).unsqueeze(-1)
        x[idx] = sub.project(xa + dx)
        eta[idx] = new_eta
    return {"x": out_x, "eta": out_eta, "f": out_f, "lb": best, "residual": out_res, "converged": converged}


def _solve_newton(prob: _Problem, outer=30, inner=5, cg_iter=30, tol=None):
    """Bisection on η (as the reference) with Newton–CG inner steps, stopping early on convergence."""
    tol = tol or _tolerances(prob.x0.dtype)
    x0 = prob.x0
    N = x0.shape[0]
    st0 = prob.state(x0)
    hi = _bracket_eta_hi(prob, st0, prob.eta_limit())
    width0 = hi.clone()
    lo = torch.zeros_like(hi)
    eta = (lo + hi) / 2
    x = x0.clone()
    best = torch.full((N,), -torch.inf, dtype=torch.float64, device=x0.device)
    out = {"x": x.clone(), "eta": eta.clone(), "f": st0.f.clone(),
           "residual": torch.full((N,), torch.inf, dtype=x0.dtype, device=x0.device)}
    converged = torch.zeros(N, dtype=torch.bool, device=x0.device)
    active = torch.ones(N, dtype=torch.bool, device=x0.device)
    for _ in range(outer):
        idx = active.nonzero().squeeze(1)
        if idx.numel() == 0:
            break
        sub = _Sub(prob, idx)
        xa, ea = x[idx], eta[idx]
        for _ in range(inner):
            st = prob.state(xa, idx)
            r = xa - x0[idx] + ea.unsqueeze(-1) * st.grad
            prob.evals[idx] += 1
            if bool((r.norm(dim=-1) <= tol["tol_r"] * (1 + (xa - x0[idx]).norm(dim=-1))).all()):
                break

            def apply_A(v, st=st, ea=ea):
                return v + ea.unsqueeze(-1) * st.hvp(v)

            step, n_cg = _cg(apply_A, r, cg_iter, tol["cg_tol"])
            prob.evals[idx] += n_cg
            xa = sub.project(xa - step)
        st = prob.state(xa, idx)
        prob.evals[idx] += 1
        lb, r = sub.lower_bound(xa, ea, st)
        res = r.norm(dim=-1)
        better = lb > best[idx]
        bi = idx[better]
        best[bi] = lb[better]
        out["x"][bi], out["eta"][bi], out["f"][bi], out["residual"][bi] = xa[better], ea[better], st.f[
            better], res[better]
        x[idx] = xa
        scale = 1 + (xa - x0[idx]).norm(dim=-1)
        inner_ok = res <= tol["tol_r"] * scale
        done = inner_ok & ((st.f.abs() <= tol["tol_f"] * scale) | ((hi[idx] - lo[idx]) <= 1e-8 * width0[idx]))
        converged[idx[done]] = True
        active[idx[done]] = False
        pos = st.f > 0
        lo[idx] = torch.where(pos, ea, lo[idx])
        hi[idx] = torch.where(pos, hi[idx], ea)
        eta[idx] = (lo[idx] + hi[idx]) / 2
    out.update({"lb": best, "converged": converged})
    return out


class _Sub:
    """A view of a :class:`_Problem` restricted to the rows ``idx``."""

    def __init__(self, prob: _Problem, idx):
        self.prob, self.idx = prob, idx
        self.x0 = prob.x0[idx]
        self.m = prob.m[idx]
        self.m64 = prob.m64[idx]
        self.ball = None if prob.ball is None else prob.ball[idx]

    lower_bound = _Problem.lower_bound
    project = _Problem.project


_SOLVE = {"mm": _solve_mm, "kkt": _solve_kkt, "newton": _solve_newton}


def _round_down(v64: torch.Tensor, dtype) -> torch.Tensor:
    """Cast a float64 bound to ``dtype`` without rounding it up (a certificate must stay a lower bound)."""
    v = v64.to(dtype)
    up = v.to(torch.float64) > v64
    return torch.where(up, torch.nextafter(v, torch.zeros_like(v)), v)


def _model64(net: models.Network) -> models.Network:
    """A float64 copy of the network ``net`` holding exactly its weights, as a Network read the same way (same input
    shape and softplus policy). Cached on the module the network was read from (``net.source``: the package's model,
    the user's Sequential), so it lives across calls; refreshed when the weights or the layers change."""
    import copy

    src = net.source
    key = (tuple((p.data_ptr(), p._version) for p in net.parameters()), net.signature)
    cached = getattr(src, "_sorobust_model64", None)
    if cached is None or cached[0] != key:
        m64 = copy.deepcopy(src)
        m64.__dict__.pop("_sorobust_model64", None)
        m64 = models.as_network(m64.to(torch.float64), in_shape=net.in_shape,
                                softplus_threshold=net.softplus_threshold)
        object.__setattr__(src, "_sorobust_model64", (key, m64))
        cached = (key, m64)
    return cached[1]


def _reevaluate64(model, prob: _Problem, x, eta):
    """The sound bound L − ‖∇ₓL‖²/(2μ) of the module docstring at the solver's final (x, η), recomputed with f and
    ∇f evaluated in float64 on a float64 copy of the weights.

    A solver running in float32 evaluates f and ∇f with relative errors of ~10⁻⁷ of the logit scale; over the
    best-of-iterates those errors can lift the bound above d(η) (issue 11: 7 float32 certificates broken by a
    float64 attack by 10⁻⁶–10⁻⁵ of the radius). The float32 weights are exactly representable in float64, so this
    is the same function, evaluated with an error ~10⁻⁹ times smaller; m, M are already sound float64 bounds of
    these weights. The bound holds at any (x, η) (weak duality + strong convexity), so using the final iterate
    rather than the best keeps it a bound.
    """
    m64 = _model64(model)
    x64, e64 = x.to(torch.float64), eta.to(torch.float64)
    st = curv.margin_state(m64, x64, prob.y, prob.t)
    lb, _ = prob.lower_bound(x64, e64, st)
    return lb


def _solve(model, x0, y, t, m, M, solver, ball=None, **kw):
    prob = _Problem(model, x0, y, t, m, M, ball)
    with torch.no_grad():
        out = _SOLVE[solver](prob, **kw)
        if x0.dtype != torch.float64:  # soundness in every dtype: the reported bound is a float64 evaluation
            out["lb"] = _reevaluate64(model, prob, out["x"], out["eta"])
    out["cert"] = _round_down(torch.sqrt((2 * out["lb"]).clamp(min=0).nan_to_num(0.0)), x0.dtype)
    out["cert_raw"] = out["cert"]
    if ball is not None:  # c(r) certifies dist ≥ min(c(r), r)
        out["cert"] = torch.minimum(out["cert"], prob.ball)
    if "cert_ref" not in out:
        d = out["x"] - x0
        out["cert_ref"] = torch.sqrt(((d * d).sum(-1) + 2 * out["eta"] * out["f"]).clamp(min=0))
    out["evals"] = prob.evals
    return out


def _local_search(model, cb, x0, y, t, li, cert, cert_ref, eta, xs, fs, res, conv, evals, m_used, M_used,
                  solver, steps, solver_kw):
    """Fixed-point search for the largest r with c(r) ≥ r (local curvature on the ball of radius r).

    Starts from the global certificate (sound, and ≤ r* since local bounds are tighter); while the ball is
    certified whole (c(r) ≥ r) the next radius is c(r), otherwise it bisects between the best certified radius
    and the failed one. Every value kept is min(c(r), r), a sound certificate. Updates the output rows ``li``.
    """
    best = cert[li].clone()
    r_try = torch.where(best > 0, best, torch.full_like(best, 1e-3))
    hi_r = torch.full_like(best, torch.inf)
    for _ in range(steps):
        ml, Ml = cb.local(x0, y, t, r_try)
        o = _solve(model, x0, y, t, ml, Ml, solver, ball=r_try, **solver_kw)
        evals[li] += o["evals"]
        c_r = o["cert"]
        improved = c_r > best
        upd = li[improved]
        cert[upd], eta[upd], xs[upd] = c_r[improved], o["eta"][improved], o["x"][improved]
        cert_ref[upd] = o["cert_ref"][improved]
        fs[upd], res[upd], conv[upd] = o["f"][improved], o["residual"][improved], o["converged"][improved]
        m_used[upd], M_used[upd] = ml[improved].to(m_used.dtype), Ml[improved].to(M_used.dtype)
        best = torch.maximum(best, c_r)
        whole = o["cert_raw"] >= r_try
        hi_r = torch.where(whole, hi_r, torch.minimum(hi_r, r_try))
        grow = torch.maximum(o["cert_raw"], r_try * 1.05)
        r_try = torch.where(torch.isinf(hi_r), grow, (best + hi_r) / 2)


def crc(model, x: torch.Tensor, y: torch.Tensor, targets="all", curvature: str = "global", solver: str = "kkt",
        bounds_cache: curv.CurvatureBounds | None = None, local_steps: int = 4, **solver_kw) -> CRCResult:
    """Curvature-based Robustness Certificates of the points x (B, …) with labels y (B,).

    Args:
        model: any network :func:`sorobust.models.as_network` reads — the package's MLP or conv net, a user's
            ``nn.Sequential`` of Linear / Conv2d / Flatten layers with one smooth activation (Sigmoid, Tanh,
            Softplus) between them, any widths — or a :class:`~sorobust.models.Network`.
        x, y: inputs and labels.
        targets: ``"all"`` (sound multi-class certificate, default), ``"runner-up"`` (reference protocol) or a
            (B,) tensor of target classes.
        curvature: ``"global"`` or ``"local"`` curvature bounds (see module docstring).
        solver: ``"kkt"`` (default), ``"newton"`` or ``"mm"`` (reference).
        bounds_cache: a :class:`~sorobust.curvature.CurvatureBounds` to reuse across calls (global bounds are
            computed once per (y, t) pair).
        local_steps: radii tried by the local fixed-point search.

    Returns:
        A :class:`CRCResult`. Points whose margin against a target is already ≤ 0 get certificate 0.
    """
    if solver not in SOLVERS:
        raise ValueError(f"unknown solver '{solver}'; expected one of {SOLVERS}")
    if curvature not in ("global", "local"):
        raise ValueError(f"unknown curvature '{curvature}'; expected global or local")
    t_start = time.perf_counter()
    model = models.as_network(model, models.input_shape_of(x))
    model.require_smooth()
    cb = bounds_cache if bounds_cache is not None else curv.CurvatureBounds(model)
    B = x.shape[0]
    x0 = x.flatten(1)
    dtype = next(model.parameters()).dtype
    x0 = x0.to(dtype)
    with torch.no_grad():
        logits = model(x0)
    C = logits.shape[1]
    if isinstance(targets, torch.Tensor):
        tt = targets.reshape(B, 1)
        proto = "given"
    elif targets == "runner-up":
        tt = runner_up(logits, y).reshape(B, 1)
        proto = targets
    elif targets == "all":
        allc = torch.arange(C, device=y.device).expand(B, C)
        tt = allc[allc != y.reshape(B, 1)].reshape(B, C - 1)
        proto = targets
    else:
        raise ValueError(f"unknown targets '{targets}'; expected 'all', 'runner-up' or a tensor")
    T = tt.shape[1]
    # flatten (point, target) problems
    pi = torch.arange(B, device=y.device).repeat_interleave(T)
    yy, ty = y[pi], tt.reshape(-1)
    xx = x0[pi]
    f0 = logits[pi, yy] - logits[pi, ty]
    live = f0 > 0
    n = pi.numel()
    cert = torch.zeros(n, dtype=dtype, device=x0.device)
    cert_ref = torch.zeros(n, dtype=dtype, device=x0.device)
    eta = torch.zeros(n, dtype=dtype, device=x0.device)
    xs = xx.clone()
    fs = f0.clone()
    res = torch.zeros(n, dtype=dtype, device=x0.device)
    conv = torch.ones(n, dtype=torch.bool, device=x0.device)
    evals = torch.zeros(n, dtype=torch.long, device=x0.device)
    m_all, M_all = (v.to(x0.device) for v in cb.global_(yy, ty))
    m_used, M_used = m_all.clone(), M_all.clone()
    li = live.nonzero().squeeze(1)
    if li.numel():
        out = _solve(model, xx[li], yy[li], ty[li], m_all[li], M_all[li], solver, **solver_kw)
        cert[li], cert_ref[li], eta[li], xs[li] = out["cert"], out["cert_ref"], out["eta"], out["x"]
        fs[li], res[li], conv[li], evals[li] = out["f"], out["residual"], out["converged"], out["evals"]
        if curvature == "local":
            _local_search(model, cb, xx[li], yy[li], ty[li], li, cert, cert_ref, eta, xs, fs, res, conv, evals, m_used,
                          M_used, solver, local_steps, solver_kw)
    tol = _tolerances(dtype)
    exact = live & conv & (fs.abs() <= tol["tol_f"] * 10 * (1 + (xs - xx).norm(dim=-1)))
    # reduce over targets: the certificate is the minimum; report the fields of the minimising target
    certs = cert.reshape(B, T)
    k = certs.argmin(1)
    sel = torch.arange(B, device=y.device) * T + k
    dead = (~live).reshape(B, T).any(1)
    result = CRCResult(
        certificate=certs.min(1).values,
        certificate_reference=cert_ref.reshape(B, T).min(1).values,
        target=ty[sel], eta=eta[sel], x_star=xs[sel], f=fs[sel], residual=res[sel],
        exact=exact[sel] & ~dead, converged=conv.reshape(B, T).all(1), iterations=evals.reshape(B, T).sum(1),
        m=m_used[sel], M=M_used[sel], time_s=time.perf_counter() - t_start,
        protocol={"targets": proto, "curvature": curvature, "solver": solver},
    )
    return result
