"""Linear-relaxation baselines under an ℓ2 ball: IBP, CROWN, CROWN-IBP, and CNN-Cert on the conv net.

* **IBP** (interval bound propagation; Gowal et al. 2018): the first layer is exact over the ℓ2 ball,
  z_1 ∈ W1 x0 + b1 ± ε‖W1_i‖₂; later layers use interval arithmetic (σ is monotone); the last layer is
  "elided" into the margin specification C (bounds of C W_L a directly).
* **CROWN** (Zhang et al. 2018, "Efficient Neural Network Robustness Certification with General Activation
  Functions"): every pre-activation bound, and the margins z_y − z_j, are bounded by back-substituting linear
  relaxations a_j ∈ [α^L z + β^L, α^U z + β^U] of each neuron on its pre-activation interval [l, u] down to the
  input, then concretised over the ball: min_{‖x−x0‖≤ε} Λx = Λx0 − ε‖Λ‖₂ (row-wise dual norm).
  Relaxations (CROWN's Table/§3.2):

  - relu: upper = chord u(z − l)/(u − l); lower slope 1 if u > −l else 0 ("adaptive"), or the chord's slope
    u/(u − l) through 0 ("same-slope", which makes CROWN equal Fast-Lin and Wong & Kolter's dual bound);
  - softplus (convex): upper = chord, lower = tangent at (l + u)/2;
  - sigmoid, tanh (convex for z < 0, concave for z > 0): on u ≤ 0 chord above and midpoint tangent below; on
    l ≥ 0 the mirror image; on l < 0 < u the chord where it is valid (slope ≤ σ'(u) for the upper, ≤ σ'(l) for
    the lower), otherwise the tangent at d through the far endpoint, d found by bisection to full float64
    precision and kept on the side where the line stays a valid bound.

* **CROWN-IBP** (Zhang et al. 2020): intermediate bounds from IBP, the margin bound by CROWN's back-substitution.
* **CNN-Cert** (Boopathy et al. 2019) on the single-hidden-layer conv net: CNN-Cert propagates CROWN's linear
  bounds through the convolution in convolutional form; for a ``valid``-padding convolution that is exactly CROWN
  on the convolution unrolled to its (Toeplitz) matrix, which is what :func:`certified_radius` does for a
  :class:`~sorobust.models.ConvNet` (``model.ops()[0].dense()``; baselines.md §3).

All bounds are computed in the model's dtype (use float64 for verification). Certified radius: bisection on ε
(``steps`` halvings of [0, ``eps_max``]), all points and their bisection states batched together.
"""

from __future__ import annotations

import time

import torch

from .crc import runner_up

METHODS = ("crown", "ibp", "crown-ibp")


def _layers(model):
    ops = model.ops()
    Ws = [op.dense() for op in ops]
    bs = [op.bias for op in ops]
    return Ws, bs


def _tangent_through(fn, d1, anchor, lo, hi, upper: bool, iters: int = 80):
    """Tangent point d ∈ [lo, hi] whose tangent line passes through (anchor, σ(anchor)), kept on the safe side.

    For the upper bound (anchor = l < 0, d ∈ [0, u]) g(d) = σ(d) + σ'(d)(l − d) − σ(l) increases with d and the
    line is a valid upper bound when g ≥ 0: return the upper end of the final bracket. The lower bound
    (anchor = u > 0, d ∈ [l, 0]) is the mirror image: return the lower end.
    """
    fa = fn(anchor)
    a, b = lo.clone(), hi.clone()
    for _ in range(iters):
        mid = (a + b) / 2
        g = fn(mid) + d1(mid) * (anchor - mid) - fa
        if upper:  # g increasing in d; want g ≥ 0
            ok = g >= 0
            b = torch.where(ok, mid, b)
            a = torch.where(ok, a, mid)
        else:  # mirrored: g decreasing in d on [l, 0]; want the line below σ(u): g ≤ 0
            ok = g <= 0
            a = torch.where(ok, mid, a)
            b = torch.where(ok, b, mid)
    return b if upper else a


def relaxation(act, l: torch.Tensor, u: torch.Tensor, relu_lower: str = "adaptive"):
    """Linear bounds α^L z + β^L ≤ σ(z) ≤ α^U z + β^U for z ∈ [l, u] (elementwise), CROWN's rules."""
    if relu_lower not in ("adaptive", "same-slope"):
        raise ValueError(f"unknown relu_lower '{relu_lower}'; expected adaptive or same-slope")
    fn, d1 = act.fn, act.d1
    name = act.name
    width = u - l
    tiny = width <= 1e-12 * (1 + l.abs())
    us = torch.where(tiny, l + 1.0, u)  # avoid 0/0 below; tiny intervals are handled at the end
    fl, fu = fn(l), fn(us)
    k = (fu - fl) / (us - l)  # chord slope
    chord_b = fl - k * l
    if name == "relu":
        cross = (l < 0) & (u > 0)
        aU = torch.where(u <= 0, torch.zeros_like(l), torch.where(l >= 0, torch.ones_like(l), k))
        bU = torch.where(cross, chord_b, torch.zeros_like(l))
        if relu_lower == "same-slope":
            aL = torch.where(cross, k, aU)
        else:
            aL = torch.where(cross, (u > -l).to(l.dtype), aU)
        bL = torch.zeros_like(l)
    else:
        m = (l + us) / 2
        tan_a, tan_b = d1(m), fn(m) - d1(m) * m
        if name == "softplus":  # convex: chord above, midpoint tangent below
            aU, bU, aL, bL = k, chord_b, tan_a, tan_b
        else:  # sigmoid / tanh
            neg, pos = us <= 0, l >= 0
            cross = ~neg & ~pos
            # upper bound
            chord_up_ok = k <= d1(us)
            d_up = _tangent_through(fn, d1, l, torch.zeros_like(l), us.clamp(min=0), upper=True)
            tu_a, tu_b = d1(d_up), fn(d_up) - d1(d_up) * d_up
            aU = torch.where(neg, k, torch.where(pos, tan_a, torch.where(chord_up_ok, k, tu_a)))
            bU = torch.where(neg, chord_b, torch.where(pos, tan_b, torch.where(chord_up_ok, chord_b, tu_b)))
            # lower bound
            chord_lo_ok = k <= d1(l)
            d_lo = _tangent_through(fn, d1, us, l.clamp(max=0), torch.zeros_like(l), upper=False)
            tl_a, tl_b = d1(d_lo), fn(d_lo) - d1(d_lo) * d_lo
            aL = torch.where(neg, tan_a, torch.where(pos, k, torch.where(chord_lo_ok, k, tl_a)))
            bL = torch.where(neg, tan_b, torch.where(pos, chord_b, torch.where(chord_lo_ok, chord_b, tl_b)))
            del cross
    # rounding slack on the intercepts, and constant bounds on degenerate intervals (σ is monotone)
    slack = 4 * torch.finfo(l.dtype).eps * (1 + fl.abs() + fu.abs() + (aU.abs() + aL.abs()) * (l.abs() + u.abs()))
    bU, bL = bU + slack, bL - slack
    zero = torch.zeros_like(l)
    aU, aL = torch.where(tiny, zero, aU), torch.where(tiny, zero, aL)
    bU = torch.where(tiny, fn(u) + slack, bU)
    bL = torch.where(tiny, fn(l) - slack, bL)
    return aL, bL, aU, bU


def _relax_step(Lam, c, rel):
    """Λ a + c ≥ Λ' z + c': replace a = σ(z) by its lower relaxation where Λ ≥ 0 and its upper one where Λ < 0."""
    aL, bL, aU, bU = rel
    nonneg = Lam >= 0  # one selection mask instead of separate positive and negative parts (memory-bound step)
    c = c + (Lam * torch.where(nonneg, bL.unsqueeze(1), bU.unsqueeze(1))).sum(-1)
    return Lam * torch.where(nonneg, aL.unsqueeze(1), aU.unsqueeze(1)), c


def _backward(Ws, bs, relax, Lam, c, x0, eps, start):
    """Lower bound of Λ z_start + c over ‖x − x0‖ ≤ eps: back-substitute layers start … 0 (0-based) and
    concretise with the ℓ2 dual norm. Λ (B, K, N_start), c (B, K), eps (B,); relax[j] is hidden layer j's."""
    for j in range(start, 0, -1):
        c = c + Lam @ bs[j]
        Lam, c = _relax_step(Lam @ Ws[j], c, relax[j - 1])
    c = c + Lam @ bs[0]
    Lam = Lam @ Ws[0]
    return (Lam @ x0.unsqueeze(-1)).squeeze(-1) + c - eps.unsqueeze(-1) * Lam.norm(dim=-1)


def _first_layer(Ws, bs, x0, eps):
    c = x0 @ Ws[0].T + bs[0]
    r = eps.unsqueeze(-1) * Ws[0].norm(dim=1)
    return c - r, c + r


def intermediate_bounds(model, x0, eps, method="crown", relu_lower="adaptive"):
    """Pre-activation bounds [(l, u)] of every hidden layer over ‖x − x0‖ ≤ eps (B,), with their relaxations.

    ``method="crown"`` bounds each layer by back-substitution (lower and upper together, as ±W_k); ``"ibp"``
    by interval arithmetic after the exact first layer.
    """
    act = model.activation
    Ws, bs = _layers(model)
    B = x0.shape[0]
    bounds, relax = [], []
    l, u = _first_layer(Ws, bs, x0, eps)
    for k in range(len(Ws) - 1):
        if k > 0:
            if method == "crown":
                n = Ws[k].shape[0]
                Lam = torch.cat([Ws[k], -Ws[k]]).unsqueeze(0).expand(B, -1, -1)
                c = torch.cat([bs[k], -bs[k]]).unsqueeze(0).expand(B, -1)
                Lam, c = _relax_step(Lam, c, relax[k - 1])
                lb = _backward(Ws, bs, relax, Lam, c, x0, eps, k - 1)
                l, u = lb[:, :n], -lb[:, n:]
            else:
                al, au = act.fn(l), act.fn(u)
                mid = (al + au) / 2 @ Ws[k].T + bs[k]
                rad = (au - al) / 2 @ Ws[k].abs().T
                l, u = mid - rad, mid + rad
        bounds.append((l, u))
        relax.append(relaxation(act, l, u, relu_lower))
    return bounds, relax, Ws, bs


def margin_bounds(model, x: torch.Tensor, y: torch.Tensor, eps, targets: torch.Tensor | None = None,
                  method: str = "crown", relu_lower: str = "adaptive") -> torch.Tensor:
    """Lower bounds (B, K) on the margins z_y − z_t over ‖x' − x‖ ≤ eps, for targets (B, K) (default: all t ≠ y).

    ``method``: ``"crown"``, ``"ibp"`` (last layer elided into the margin) or ``"crown-ibp"`` (IBP intermediate
    bounds, CROWN for the margin). Differentiable in the weights (CROWN-IBP training backpropagates through it);
    wrap in ``torch.no_grad()`` when only the values are needed.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method '{method}'; expected one of {METHODS}")
    x0 = x.flatten(1)
    B = x0.shape[0]
    eps = torch.as_tensor(eps, dtype=x0.dtype, device=x0.device).reshape(-1).expand(B)
    Ws, bs = _layers(model)
    if targets is None:
        C = Ws[-1].shape[0]
        allc = torch.arange(C, device=y.device).expand(B, C)
        targets = allc[allc != y.reshape(B, 1)].reshape(B, C - 1)
    inner = "ibp" if method in ("ibp", "crown-ibp") else "crown"
    bounds, relax, Ws, bs = intermediate_bounds(model, x0, eps, inner, relu_lower)
    Lam = Ws[-1][y].unsqueeze(1) - Ws[-1][targets]  # (B, K, N_{L-1})
    c = bs[-1][y].unsqueeze(1) - bs[-1][targets]
    if method == "ibp":
        l, u = bounds[-1]
        al, au = model.activation.fn(l), model.activation.fn(u)
        cen, rad = (al + au) / 2, (au - al) / 2
        return (Lam @ cen.unsqueeze(-1)).squeeze(-1) - (Lam.abs() @ rad.unsqueeze(-1)).squeeze(-1) + c
    Lam, c = _relax_step(Lam, c, relax[-1])
    return _backward(Ws, bs, relax, Lam, c, x0, eps, len(Ws) - 2)


def _targets(logits, y, targets, generator):
    B, C = logits.shape
    if isinstance(targets, torch.Tensor):
        return targets.reshape(B, -1), "given"
    if targets == "all":
        allc = torch.arange(C, device=y.device).expand(B, C)
        return allc[allc != y.reshape(B, 1)].reshape(B, C - 1), "all"
    if targets == "runner-up":
        return runner_up(logits, y).reshape(B, 1), "runner-up"
    if targets == "random":  # CNN-Cert's default: a uniformly random wrong class
        r = torch.randint(C - 1, (B,), generator=generator).to(y.device)
        return (r + (r >= y).long()).reshape(B, 1), "random"
    raise ValueError(f"unknown targets '{targets}'; expected all, runner-up, random or a tensor")


def bisect_radius(check, target: torch.Tensor, eps_max: float, steps: int, dtype) -> tuple:
    """Batched bisection for the largest certified ε of each point: ``check(eps)`` (eps (B,)) returns which points
    are certified at their eps and the binding target. The bracket [0, eps_max] is first doubled (at most 16
    times) while its upper end is certified, then halved ``steps`` times; returns (lower ends, their targets)."""
    lo = torch.zeros(target.shape[0], dtype=dtype, device=target.device)
    hi = torch.full_like(lo, eps_max)
    tgt = target.clone()
    for _ in range(16):  # grow the bracket while the whole of it is certified
        ok, tnew = check(hi)
        if not bool(ok.any()):
            break
        lo, hi, tgt = torch.where(ok, hi, lo), torch.where(ok, 2 * hi, hi), torch.where(ok, tnew, tgt)
    for _ in range(steps):
        mid = (lo + hi) / 2
        ok, tnew = check(mid)
        lo, hi, tgt = torch.where(ok, mid, lo), torch.where(ok, hi, mid), torch.where(ok, tnew, tgt)
    return lo, tgt


def certified_radius(model, x: torch.Tensor, y: torch.Tensor, targets="all", method: str = "crown",
                     steps: int = 20, eps_max: float = 4.0, relu_lower: str = "adaptive",
                     generator: torch.Generator | None = None) -> dict:
    """Largest ε (to bisection precision ``eps_max``/2^steps) at which every margin bound is positive.

    The bracket [0, eps_max] is doubled first while its upper end is still certified.

    Returns a dict of per-point tensors ``radius`` (0 for misclassified points), ``target`` (the target whose
    bound is smallest at the returned radius), and ``time_s``.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method '{method}'; expected one of {METHODS}")
    t0 = time.perf_counter()
    x0 = x.flatten(1).to(next(model.parameters()).dtype)
    B = x0.shape[0]
    with torch.no_grad():
        logits = model(x0)
    tt, _ = _targets(logits, y, targets, generator)
    correct = logits.argmax(1) == y
    radius = torch.zeros(B, dtype=x0.dtype, device=x0.device)
    # at ε = 0 every bound is the margin itself: until a radius is certified, the binding target is the one
    # with the smallest margin
    margins = logits.gather(1, y.reshape(B, 1)) - logits.gather(1, tt)
    target = tt.gather(1, margins.argmin(1, keepdim=True)).squeeze(1)
    idx = correct.nonzero().squeeze(1)  # misclassified points have radius 0: no bounds needed
    if idx.numel():
        xs, ys, ts = x0[idx], y[idx], tt[idx]

        @torch.no_grad()
        def check(eps):
            lb = margin_bounds(model, xs, ys, eps, ts, method, relu_lower)
            return lb.min(1).values > 0, ts.gather(1, lb.argmin(1, keepdim=True)).squeeze(1)

        radius[idx], target[idx] = bisect_radius(check, target[idx], eps_max, steps, x0.dtype)
    return {"radius": radius, "target": target, "time_s": time.perf_counter() - t0}
