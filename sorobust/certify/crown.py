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
    the lower), otherwise the tangent at d through the far endpoint, d found to full precision (by bisection
    under autograd, else by safeguarded Newton in float64) and kept on the side where the line stays a valid
    bound.

* **CROWN-IBP** (Zhang et al. 2020): intermediate bounds from IBP, the margin bound by CROWN's back-substitution.
* **CNN-Cert** (Boopathy et al. 2019) on the single-hidden-layer conv net: CNN-Cert propagates CROWN's linear
  bounds through the convolution in convolutional form; that is exactly CROWN on the convolution unrolled to its
  (Toeplitz) matrix, which is what :func:`certified_radius` does for a :class:`~sorobust.models.ConvNet`
  (``model.ops()[0].dense()``; baselines.md §3), and for any convolution (zero padding, any stride) of a user's net.

Every entry reads its ``model`` through :func:`sorobust.models.as_network` (the package's nets, a user's
``nn.Sequential`` of Linear / Conv2d / Flatten with one activation, ReLU included).

All bounds are computed in the model's dtype (use float64 for verification).

**Certified radius** (:func:`certified_radius`), all points batched. IBP: bisection on ε, ``steps`` halvings of
[0, ``eps_max``] (the bracket doubled first while its upper end is certified). CROWN and CROWN-IBP: a search to the
same precision with fewer bound evaluations, resting on two facts.

* A bound evaluated at ε — intermediate bounds, hence relaxations, at ε — is a line in ε': the margin is
  ≥ Λx0 + c − ε'‖Λ‖₂ over every ball of radius ε' ≤ ε (the intermediate bounds at ε hold over the smaller ball
  too, only looser). So each evaluation certifies every ε' up to min(ε, its line's zero), even one failing at ε.
* Each hidden layer's bounds at ε are such lines too: below a failing ε, the intervals given by them at ε' are
  valid over the ε'-ball, so the margin bound rebuilt on them (relaxations anew; only the K margin rows are
  back-substituted, which costs little) is sound at ε' as well, and much closer to the bound evaluated at ε'.

Each point keeps a certified lower end lo (from such a certificate) and an upper end hi where a full evaluation
fails, and stops when hi − lo ≤ eps_max / 2^steps (or the doubled bracket's precision above eps_max): the
bisection's own stopping rule, so the radius is within it of a zero of the bound, as the bisection's is (where the
bound is not monotone in ε — relu's adaptive lower slope, deep saturation — the two may stop at different zeros,
both certified). Where to evaluate next (only the speed depends on it): far from the radius, a model of the line's
zero against ε; near it, the bound predicted from the intervals of the certified and failing evaluations around it
(interpolated in ε), with the neurons whose interval starts to contain 0 in between located: the bound jumps there,
and probes are put right beside such a jump. Finished points leave the batch.
"""

from __future__ import annotations

import time

import torch

from .. import models
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
    (anchor = u > 0, d ∈ [l, 0], g again increasing) is the mirror image: valid when g ≤ 0, return the lower end.
    (Under autograd; without it :func:`_tangent_newton` finds the same points faster.)
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
        else:  # mirrored: want the line below σ(u): g ≤ 0 (g increases with d on [l, 0] too)
            ok = g <= 0
            a = torch.where(ok, mid, a)
            b = torch.where(ok, b, mid)
    return b if upper else a


def _tangent_newton(act, anchor, lo, hi, upper, iters: int = 60):
    """The tangent points of :func:`_tangent_through` for a batch mixing upper (``upper`` True) and lower
    problems, without autograd and in fewer steps: safeguarded Newton on g (which increases with d in both
    problems, from g(lo) ≤ 0 to g(hi) ≥ 0) in float64, from d = −anchor/2 (the root's limit as the anchor → 0;
    a bisection step wherever Newton leaves the bracket), until the step is below what g's rounding resolves;
    then rounded to the input dtype and moved by one unit in the last place towards the safe end if g there,
    evaluated in float64, is on the wrong side (g ≥ 0 is safe for an upper line, g ≤ 0 for a lower one)."""
    fn, d1 = act.fn, act.d1
    A, a, b = anchor.double(), lo.double(), hi.double()
    fa = fn(A)
    ulp = torch.finfo(A.dtype).eps
    d = torch.minimum(torch.maximum(-A / 2, a), b)
    frozen = torch.zeros_like(upper)
    for _ in range(iters):
        fd, sd = fn(d), d1(d)
        gd = fd + sd * (A - d) - fa
        right = gd >= 0
        a, b = torch.where(right, a, d), torch.where(right, d, b)
        if act.name == "sigmoid":  # σ'' from the values at hand (the step needs no full accuracy)
            dd = sd * (1 - 2 * fd)
        elif act.name == "tanh":
            dd = -2 * fd * sd
        else:
            dd = act.d2(d)
        slope = dd * (A - d)
        dn = d - gd / slope
        dn = torch.where((dn >= a) & (dn <= b), dn, (a + b) / 2)  # (also where the step is nan or inf)
        # converged: a step below what g's rounding (a few ulps of its terms) resolves, or a collapsed bracket
        noise = 4 * ulp * (fd.abs() + (sd * (A - d)).abs() + fa.abs()) / slope.abs()
        frozen = frozen | ((dn - d).abs() <= 4 * ulp * d.abs() + noise) | (b - a <= 4 * ulp * (a.abs() + b.abs()))
        d = torch.where(frozen, d, dn)
        if bool(frozen.all()):
            break
    x = d.to(anchor.dtype)
    xd = x.double()
    gx = fn(xd) + d1(xd) * (A - xd) - fa
    safe_end = torch.where(upper, hi, lo)
    wrong = torch.where(upper, gx < 0, gx > 0)
    return torch.where(wrong, torch.nextafter(x, safe_end), x)


def _tangent_pair(act, l, us, need_up, need_lo):
    """Tangent points d_up (through (l, σ(l)), d ∈ [0, u]) where ``need_up`` and d_lo (through (u, σ(u)),
    d ∈ [l, 0]) where ``need_lo``, 0 elsewhere; no autograd."""
    fl, fu, mu, ml = l.reshape(-1), us.reshape(-1), need_up.reshape(-1), need_lo.reshape(-1)
    lu, ul = fl[mu], fu[ml]
    nu = lu.shape[0]
    lo = torch.cat([torch.zeros_like(lu), fl[ml].clamp(max=0)])
    hi = torch.cat([fu[mu].clamp(min=0), torch.zeros_like(ul)])
    upper = torch.cat([torch.ones_like(mu[mu]), torch.zeros_like(ml[ml])])
    d = _tangent_newton(act, torch.cat([lu, ul]), lo, hi, upper)
    d_up, d_lo = torch.zeros_like(fl), torch.zeros_like(fl)
    d_up[mu], d_lo[ml] = d[:nu], d[nu:]
    return d_up.reshape(l.shape), d_lo.reshape(l.shape)


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
            chord_up_ok, chord_lo_ok = k <= d1(us), k <= d1(l)  # where the chord is a valid upper / lower line
            if torch.is_grad_enabled() and (l.requires_grad or u.requires_grad):
                d_up = _tangent_through(fn, d1, l, torch.zeros_like(l), us.clamp(min=0), upper=True)
                d_lo = _tangent_through(fn, d1, us, l.clamp(max=0), torch.zeros_like(l), upper=False)
            else:  # only where a tangent is used, the upper and lower problems in one batch
                d_up, d_lo = _tangent_pair(act, l, us, cross & ~chord_up_ok, cross & ~chord_lo_ok)
            tu_a, tu_b = d1(d_up), fn(d_up) - d1(d_up) * d_up  # upper bound
            aU = torch.where(neg, k, torch.where(pos, tan_a, torch.where(chord_up_ok, k, tu_a)))
            bU = torch.where(neg, chord_b, torch.where(pos, tan_b, torch.where(chord_up_ok, chord_b, tu_b)))
            tl_a, tl_b = d1(d_lo), fn(d_lo) - d1(d_lo) * d_lo  # lower bound
            aL = torch.where(neg, tan_a, torch.where(pos, k, torch.where(chord_lo_ok, k, tl_a)))
            bL = torch.where(neg, tan_b, torch.where(pos, chord_b, torch.where(chord_lo_ok, chord_b, tl_b)))
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
    model = models.as_network(model)
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
    model = models.as_network(model, models.input_shape_of(x))
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


# ----------------------------------------------------------------------------------------------------------------
# certified radius: the CROWN / CROWN-IBP bound as a line in ε, without autograd
# ----------------------------------------------------------------------------------------------------------------

_BLOCK = 1 << 19  # elements of Λ per back-substitution block (a few MB: the elementwise passes stay in cache)


def _relax_fast(Lam, c, rel):
    """:func:`_relax_step` in three passes over Λ and no broadcast select: Λ' = aU∘Λ + (aL − aU)∘relu(Λ),
    c' = c + Λ bU + relu(Λ)(bL − bU). Λ (B, R, n) is overwritten; ``rel`` = (aU, aL − aU, bU, bL − bU), (B, n)."""
    aU, dA, bU, dB = rel
    P = torch.relu(Lam)
    c = c + (Lam @ bU.unsqueeze(-1)).squeeze(-1) + (P @ dB.unsqueeze(-1)).squeeze(-1)
    return Lam.mul_(aU.unsqueeze(1)).addcmul_(P, dA.unsqueeze(1)), c


def _line(Ws, bs, rels, Lam, c, x0, k):
    """Λ (B, R, n_k) over a_k = σ(z_k) (hidden layer k, 0-based), plus c (B, R), bounded below by the line
    Λ' x + c' (back-substitution of layers k … 0 with the relaxations ``rels``); returns its value at x0,
    Λ' x0 + c', and ‖Λ'‖₂, (B, R) each: min over ‖x − x0‖ ≤ ε is then Λ' x0 + c' − ε‖Λ'‖₂."""
    for j in range(k, -1, -1):
        Lam, c = _relax_fast(Lam, c, rels[j])
        c = c + Lam @ bs[j]
        Lam = Lam @ Ws[j]
    return (Lam @ x0.unsqueeze(-1)).squeeze(-1) + c, Lam.norm(dim=-1)


def _layer_lines(Ws, bs, rels, x0, k):
    """Lower bounds of z_k and of −z_k (hidden layer k ≥ 1) as lines in ε, (B, 2 n_k) each, in blocks of rows
    (every row's back-substitution is independent). The first step is shared by all points: ±W_k relaxed."""
    B = x0.shape[0]
    rows, rb = torch.cat([Ws[k], -Ws[k]]), torch.cat([bs[k], -bs[k]])
    aU, dA, bU, dB = rels[k - 1]
    R = max(8, _BLOCK // (B * max(W.shape[1] for W in Ws[:k + 1])))
    out0, out1 = [], []
    for i in range(0, rows.shape[0], R):
        W, P = rows[i:i + R], torch.relu(rows[i:i + R])
        Lam = torch.addcmul(W * aU.unsqueeze(1), P, dA.unsqueeze(1))  # (B, R, n_{k-1})
        c = rb[i:i + R] + bU @ W.T + dB @ P.T + Lam @ bs[k - 1]
        Lam = Lam @ Ws[k - 1]
        if k > 1:
            a, nrm = _line(Ws, bs, rels, Lam, c, x0, k - 2)
        else:
            a, nrm = (Lam @ x0.unsqueeze(-1)).squeeze(-1) + c, Lam.norm(dim=-1)
        out0.append(a)
        out1.append(nrm)
    return torch.cat(out0, 1), torch.cat(out1, 1)


def _margin_line(Ws, bs, act, x0, eps, Cw, Cb, method, relu_lower, lines=None):
    """The margin bounds of :func:`margin_bounds` (``crown`` or ``crown-ibp``) at ε = eps (B,) as lines:
    returns (A, N), (B, K) each, with margin ≥ A − ε'N over every ball ‖x − x0‖ ≤ ε' ≤ eps. The intermediate
    bounds (and so the relaxations) are those at eps, valid for every smaller ball; only the concretisation
    depends on ε'. Spec rows Cw = C W_L (B, K, n), Cb = C b_L (B, K). No autograd.

    ``lines`` (a list, filled in if given): each hidden layer's bounds as lines too, (A_k, N_k) of shape
    (B, 2 n_k) with [l_k; −u_k] = A_k − ε N_k (rows first lower, then upper bounds); for IBP layers N_k = 0
    and A_k the bounds at eps (valid, as constants, for every smaller ε)."""
    c0 = x0 @ Ws[0].T + bs[0]
    n0 = Ws[0].norm(dim=1).expand_as(c0)
    l, u = c0 - eps.unsqueeze(-1) * n0, c0 + eps.unsqueeze(-1) * n0
    if lines is not None:
        lines.append((torch.cat([c0, -c0], 1), torch.cat([n0, n0], 1)))
    rels = []
    for k in range(len(Ws) - 1):
        if k > 0:
            n = Ws[k].shape[0]
            if method == "crown":
                a, nrm = _layer_lines(Ws, bs, rels, x0, k)
                lb = a - eps.unsqueeze(-1) * nrm
                l, u = lb[:, :n], -lb[:, n:]
            else:  # IBP
                al, au = act.fn(l), act.fn(u)
                mid = (al + au) / 2 @ Ws[k].T + bs[k]
                rad = (au - al) / 2 @ Ws[k].abs().T
                l, u = mid - rad, mid + rad
                a, nrm = torch.cat([l, -u], 1), torch.zeros_like(torch.cat([l, u], 1))
            if lines is not None:
                lines.append((a, nrm))
        aL, bL, aU, bU = relaxation(act, l, u, relu_lower)
        rels.append((aU, aL - aU, bU, bL - bU))
    return _line(Ws, bs, rels, Cw.clone(), Cb, x0, len(Ws) - 2)


def _margin_line_at(Ws, bs, act, x0, Cw, Cb, relu_lower, bounds):
    """The margin bound as a line from given hidden-layer intervals ``bounds`` [(l_k, u_k)]: relaxations rebuilt
    from them, only the K margin rows back-substituted (cheap). Sound over any ball on which every interval is
    valid."""
    rels = []
    for l, u in bounds:
        aL, bL, aU, bU = relaxation(act, l, u, relu_lower)
        rels.append((aU, aL - aU, bU, bL - bU))
    return _line(Ws, bs, rels, Cw.clone(), Cb, x0, len(Ws) - 2)


def _at(lines, eps):
    """Intervals [(l_k, u_k)] at ε = eps (B,) from bound lines (A_k, N_k) (see :func:`_margin_line`)."""
    out = []
    for a, nrm in lines:
        lb = a - eps.unsqueeze(-1) * nrm
        n = lb.shape[1] // 2
        out.append((lb[:, :n], -lb[:, n:]))
    return out


def _linearised_roots(Ws, bs, act, x0, Cw, Cb):
    """m_j / ‖∇m_j‖ at x0 for each margin (B, K), float64: the limit of each target's root as ε → 0 (the
    relaxations tend to the tangents at x0). Only a first guess for the search."""
    zs, a = [], x0
    for W, b in zip(Ws[:-1], bs[:-1]):
        zs.append(a @ W.T + b)
        a = act.fn(zs[-1])
    m = (Cw @ a.unsqueeze(-1)).squeeze(-1) + Cb
    G = Cw
    for k in range(len(Ws) - 2, -1, -1):
        G = (G * act.d1(zs[k]).unsqueeze(1)) @ Ws[k]
    return m.double() / G.norm(dim=-1).double()


# Search constants. They steer where the bound is evaluated (so the speed), never what is returned: every radius
# is certified by a bound evaluation, and a point stops only when a full evaluation fails within the bisection
# precision (tol) above its radius.
_FIRST = 0.6  # first ε: this fraction of the linearised distance to the decision boundary ...
_FIRST_DECAY = 0.45  # ... times this per hidden layer beyond two (deeper nets certify a smaller fraction of it)
_POWER = 2.0  # exponent of the zero's loss h(ε) ≈ β ε^p until two evaluations give it
_BIAS = 0.003  # relative nudge of that estimate towards the side where no evaluation has been yet
_PREDICT = 300  # certified and failing evaluations within this many tol: predict with interpolated intervals
_WIDE_REL = 1e-4  # farther apart: with power-law interval widths, zero bracketed to this fraction of the distance,
_WUP = 0.002  # and moved up by this fraction of [lo, hi] after a certified probe (a failing one raises lo too)
_PRED_ERR = 0.003  # assumed error of the near prediction, relative to the evaluations' distance ...
_ETA = 0.3  # ... and at least this many tol
_JUMP = 5.0  # a predicted drop of the bound's zero by more than this many tol within tol/4 is a jump
_REBUILT = 3  # bounds rebuilt from a failing evaluation's lines, at most, per search for the largest ε they certify
_STATS = {}  # per call: full evaluations per point ("full"), batched rebuilt-bound evaluations ("rebuilt")


def _roots(A, N):
    """Each line's zero A/N (+inf where it never reaches 0, −inf where it starts ≤ 0), float64."""
    return torch.where(N > 0, A / N, torch.where(A > 0, torch.inf, -torch.inf)).double()


def _sound_radius(A, N, e):
    """From lines A − ε'N (B, K) valid for ε' ≤ e (B,): the largest ε' ≤ e of the dtype at which every A − ε'N is
    > 0 (checked in the dtype), or 0; returns it, whether it is certified, and the index of the smallest bound."""
    ok = (A - e.unsqueeze(1) * N).min(1).values > 0
    root = torch.where(N > 0, A / N, torch.where(A > 0, torch.inf, -torch.inf)).min(1).values
    cand = torch.where(ok, e, torch.minimum(root.clamp(min=0), e))
    for _ in range(8):  # rounding: step down until the check passes
        bad = ~((A - cand.unsqueeze(1) * N).min(1).values > 0) & (cand > 0)
        if not bool(bad.any()):
            break
        cand = torch.where(bad, torch.nextafter(cand, torch.zeros_like(cand)) * (1 - 4 * torch.finfo(A.dtype).eps),
                           cand)
    lb = A - cand.unsqueeze(1) * N
    good = lb.min(1).values > 0
    return torch.where(good, cand, torch.zeros_like(cand)), good, lb.argmin(1)


def _power_estimate(e0, r, r_prev, e_prev, e):
    """Per target, the loss of the line's zero h(ε) = e0 − root(ε) ≈ β ε^p through the last two full evaluations
    (e0, the linearised distance, is the zero's limit as ε → 0), solved for root(ε) = ε; the smallest over the
    targets. Targets without a usable loss fall back to a secant on root(ε) − ε."""
    g, g_prev = r - e.unsqueeze(1), r_prev - e_prev.unsqueeze(1)
    h, h_prev = e0 - r, e0 - r_prev
    ee, ep = e.unsqueeze(1).expand_as(h), e_prev.unsqueeze(1)
    pw = torch.log(h / h_prev) / torch.log(ee / ep)
    pw = torch.where(torch.isfinite(pw) & (ep > 0), pw, torch.full_like(pw, _POWER)).clamp(1.0, 6.0)
    beta = h / ee ** pw
    x = torch.minimum(ee, e0)
    for _ in range(30):  # Newton on e0 − x − β x^p (concave, decreasing)
        xn = (x - (e0 - x - beta * x ** pw) / (-1 - pw * beta * x ** (pw - 1))).clamp(min=0)
        if not bool(((xn - x).abs() > 1e-12 * x).any()):  # (also stops on nan)
            break
        x = xn
    x = xn
    est = torch.where((h > 0) & torch.isfinite(h) & torch.isfinite(x), x, torch.inf)
    slope = (g - g_prev) / (ee - ep)
    slope = torch.where(slope < -1e-3, slope, torch.full_like(slope, -1.0))
    est = torch.where(torch.isfinite(est), est, ee - g / slope)
    return torch.where(torch.isnan(est), torch.full_like(est, torch.inf), est).min(1).values


def _round_up(v, dt):
    """The smallest value of dtype dt that is ≥ v (float64)."""
    w = v.to(dt)
    return torch.where(w.double() < v, torch.nextafter(w, torch.full_like(w, torch.inf)), w)


def _zero(f, a, b, fa, fb, width, iters):
    """Bracket a zero of a decreasing f (f(a) > 0 ≥ f(b), each (B,)) to ``width``: regula falsi, the value at an
    end kept twice in a row halved (Illinois), bisection after three such steps. Returns the bracket, f at its
    ends and the number of (batched) calls of f."""
    ga, gb = fa.clone(), fb.clone()  # the values interpolated (halved at a stale end)
    last, same = torch.zeros_like(a), torch.zeros_like(a)
    n = 0
    for _ in range(iters):
        if bool((b - a <= width).all()):
            break
        m = a + (b - a) * (ga / (ga - gb)).clamp(0.02, 0.98)
        m = torch.where(torch.isfinite(m) & (same < 3), m, (a + b) / 2)
        fm = f(m)
        n += 1
        pos = fm > 0
        rep = torch.where(pos, last > 0, last < 0)
        same = torch.where(rep, same + 1, 0)
        a, fa, ga = torch.where(pos, m, a), torch.where(pos, fm, fa), torch.where(pos, fm, ga)
        b, fb, gb = torch.where(pos, b, m), torch.where(pos, fb, fm), torch.where(pos, gb, fm)
        ga, gb = torch.where(~pos & rep, ga / 2, ga), torch.where(pos & rep, gb / 2, gb)
        last = torch.where(pos, 1.0, -1.0)
    return a, b, fa, fb, n


def _predict(Ws, bs, act, x0, Cw, Cb, relu_lower, dt, ints_c, ints_f, ca, fa, gc, gf, lo, hi, tol):
    """Next probe from the intervals of a certified (ε = ca) and a failing (ε = fa) full evaluation: the bound is
    predicted in between from their intervals, interpolated linearly in ε (a guess, not a bound), and its zero
    bracketed to tol/4. Where it crosses 0 by jumping (a neuron's interval starts to contain 0 there, its
    relaxation loosens at once), probe right beside the jump, at the interpolated ε where that interval reaches
    0; where a jump lies elsewhere in [lo, hi], probe beside it on the predicted side (which takes it out of the
    bracket); else just above the predicted zero."""
    def g(m):
        t = ((m - ca) / (fa - ca)).to(dt).unsqueeze(1)
        ints = [(lc + t * (lf - lc), uc + t * (uf - uc)) for (lc, uc), (lf, uf) in zip(ints_c, ints_f)]
        A, N = _margin_line_at(Ws, bs, act, x0, Cw, Cb, relu_lower, ints)
        return _roots(A, N).min(1).values - m.to(dt).double()

    a_, b_, ga, gb, n = _zero(g, ca.clone(), fa.clone(), gc.clone(), gf.clone(), 0.25 * tol, 20)
    rho = (a_ + b_) / 2
    Js = []  # where each neuron's interval starts to contain 0 between the two evaluations
    for (lc, uc), (lf, uf) in zip(ints_c, ints_f):
        t = torch.where((lc >= 0) & (lf < 0), lc / (lc - lf),
                        torch.where((uc <= 0) & (uf > 0), -uc / (uf - uc), torch.inf))
        Js.append(ca.unsqueeze(1) + (fa - ca).unsqueeze(1) * t.double())
    Js = torch.cat(Js, 1)
    margin = 0.05 * tol.unsqueeze(1)
    inside = (Js > lo.unsqueeze(1) + margin) & (Js < hi.unsqueeze(1) - margin)
    dist = torch.where(inside, (Js - rho.unsqueeze(1)).abs(), torch.inf)
    j = dist.argmin(1, keepdim=True)
    J = Js.gather(1, j).squeeze(1)
    has_j = torch.isfinite(dist.gather(1, j).squeeze(1))
    at_j = has_j & (ga - gb > _JUMP * tol) & (J >= a_ - 0.02 * tol) & (J <= b_ + 0.02 * tol)
    p_at = torch.where(hi - J <= 0.9 * tol, torch.maximum(J - 0.45 * tol, hi - tol),
                       torch.where(J - lo <= 0.9 * tol, torch.minimum(J + 0.45 * tol, lo + tol), J + 0.45 * tol))
    p_beside = torch.where(rho >= J, J + 0.45 * tol, J - 0.45 * tol)
    p_smooth = rho + torch.maximum(_ETA * tol, _PRED_ERR * (fa - ca))
    return torch.where(at_j, p_at, torch.where(has_j, p_beside, p_smooth)), n


def _predict_wide(Ws, bs, act, x0, Cw, Cb, relu_lower, dt, ints_c, ints_f, ca, fa, gc, gf):
    """Zero of the bound predicted between a certified (ε = ca) and a failing (ε = fa) evaluation far apart: each
    interval's centre interpolated linearly, its half-width as a power of ε through its two values (intervals
    grow faster than ε beyond the first layer). A guess, bracketed to _WIDE_REL of the distance."""
    A_, B_ = ca.unsqueeze(1), fa.unsqueeze(1)
    pieces = []
    for (lc, uc), (lf, uf) in zip(ints_c, ints_f):
        cc, cf = (lc + uc).double() / 2, (lf + uf).double() / 2
        wc, wf = ((uc - lc).double() / 2).clamp(min=1e-300), ((uf - lf).double() / 2).clamp(min=1e-300)
        q = torch.log(wf / wc) / torch.log(B_ / A_)
        q = torch.where(torch.isfinite(q), q, torch.ones_like(q))
        pieces.append((cc, cf, wc, q))

    def g(m):
        M = m.unsqueeze(1)
        ints = []
        for cc, cf, wc, q in pieces:
            c = cc + (cf - cc) * (M - A_) / (B_ - A_)
            w = wc * (M / A_) ** q
            ints.append(((c - w).to(dt), (c + w).to(dt)))
        A, N = _margin_line_at(Ws, bs, act, x0, Cw, Cb, relu_lower, ints)
        return _roots(A, N).min(1).values - m.to(dt).double()

    a_, b_, _, _, n = _zero(g, ca.clone(), fa.clone(), gc.clone(), gf.clone(), _WIDE_REL * (fa - ca), 20)
    return (a_ + b_) / 2, n


def _crown_radius(model, x0, y, tt, method, steps, eps_max, relu_lower, tgt):
    """Certified radius of ``crown`` / ``crown-ibp`` for correctly classified points (see :func:`certified_radius`):
    returns the radius (dtype of x0) and the binding target (updated in ``tgt``)."""
    dt = x0.dtype
    Ws, bs = _layers(model)
    Ws, bs = [W.detach() for W in Ws], [b.detach() for b in bs]
    act = model.activation
    B = tt.shape[0]
    Cw = Ws[-1][y].unsqueeze(1) - Ws[-1][tt]
    Cb = bs[-1][y].unsqueeze(1) - bs[-1][tt]
    e0 = _linearised_roots(Ws, bs, act, x0, Cw, Cb)
    unit = eps_max / 2 ** steps
    cap = eps_max * 2.0 ** 16  # what the bisection's bracket doubling can reach
    f64, dev = torch.float64, x0.device
    deep = len(Ws) > 2  # with one hidden layer a rebuilt bound would cost as much as a full one

    def state(v):
        return torch.full((B,), v, dtype=f64, device=dev)

    lo = state(0.0)  # certified (by some evaluation's line)
    hi = state(cap)  # a full evaluation fails there (cap: none yet)
    e_prev, r_prev = state(0.0), e0.clone()  # previous full evaluation's ε and zeros (ε = 0: e0)
    ec, rc = state(-1.0), state(torch.inf)  # last certified full evaluation (−1: none) and its lines' least zero
    gc, gf = state(0.0), state(0.0)  # g = zero − ε at the last certified / failing full evaluation
    store_c = store_f = None  # their hidden-layer bound lines
    probe = (_FIRST * _FIRST_DECAY ** max(0, len(Ws) - 3) * e0.min(1).values).clamp(max=cap)
    probe = torch.where(torch.isfinite(probe) & (probe > 0), probe, torch.full_like(probe, eps_max))
    w_1, w_2 = state(torch.inf), state(torch.inf)  # bracket widths after the last two iterations
    active = torch.arange(B, device=dev)
    n_full, n_rebuilt = torch.zeros(B, dtype=torch.long, device=dev), 0

    def tol_at(L):  # the bisection's precision: eps_max / 2^steps, or of the doubled bracket beyond eps_max
        return unit * torch.exp2(torch.floor(torch.log2(L / eps_max)).clamp(min=0))

    def raise_lo(ids, cand, good, j):
        better = good & (cand.double() > lo[ids])
        lo[ids] = torch.where(better, cand.double(), lo[ids])
        tgt[ids] = torch.where(better, tt[ids].gather(1, j.unsqueeze(1)).squeeze(1), tgt[ids])

    for _ in range(100):
        if not active.numel():
            break
        idx = active
        e = probe[idx].to(dt)
        e64 = e.double()
        lines = [] if deep else None
        A, N = _margin_line(Ws, bs, act, x0[idx], e, Cw[idx], Cb[idx], method, relu_lower, lines)
        n_full[idx] += 1
        raise_lo(idx, *_sound_radius(A, N, e))
        ok = (A - e.unsqueeze(1) * N).min(1).values > 0
        r = _roots(A, N)
        g = r.min(1).values - e64
        hi[idx] = torch.where(ok, hi[idx], torch.minimum(hi[idx], e64))
        ec[idx], rc[idx] = torch.where(ok, e64, ec[idx]), torch.where(ok, r.min(1).values, rc[idx])
        gc[idx], gf[idx] = torch.where(ok, g, gc[idx]), torch.where(ok, gf[idx], g)
        if deep:
            if store_c is None:
                store_c = [(a.new_zeros(B, a.shape[1]), a.new_zeros(B, a.shape[1])) for a, _ in lines]
                store_f = [(CA.clone(), CN.clone()) for CA, CN in store_c]
            for (CA, CN), (FA, FN), (a, nrm) in zip(store_c, store_f, lines):
                CA[idx[ok]], CN[idx[ok]] = a[ok], nrm[ok]
                FA[idx[~ok]], FN[idx[~ok]] = a[~ok], nrm[~ok]
            if bool((~ok).any()):
                # below a failing evaluation its bound lines stay valid: the bound rebuilt from them (relaxations
                # anew, only the margin rows back-substituted) certifies more than its own line's zero. Bisect
                # for the largest ε it certifies, trying hi − tol first (which closes the bracket)
                ib = idx[~ok]
                lines_f = [(FA[ib], FN[ib]) for FA, FN in store_f]
                a_, b_ = lo[ib].clone(), hi[ib].clone()
                for k in range(_REBUILT):
                    tb = tol_at(lo[ib])
                    if bool(((b_ - a_ <= 0.1 * tb) | (hi[ib] - lo[ib] <= tb)).all()):
                        break
                    m = _round_up(torch.maximum(hi[ib] - tb if k == 0 else (a_ + b_) / 2, a_), dt)
                    A2, N2 = _margin_line_at(Ws, bs, act, x0[ib], Cw[ib], Cb[ib], relu_lower, _at(lines_f, m))
                    n_rebuilt += 1
                    raise_lo(ib, *_sound_radius(A2, N2, m))
                    okc = (A2 - m.unsqueeze(1) * N2).min(1).values > 0
                    a_ = torch.maximum(lo[ib], torch.where(okc, m.double(), a_))
                    b_ = torch.where(okc, b_, torch.minimum(b_, m.double()))
        # next probe: far from the radius, a model of the line's zero against ε; close, a prediction from the
        # intervals of the certified and failing evaluations around it
        rho = _power_estimate(e0[idx], r, r_prev[idx], e_prev[idx], e64)
        e_prev[idx], r_prev[idx] = e64, r
        L, H = lo[idx], hi[idx]
        tol = tol_at(L)
        has_c, has_f = ec[idx] >= 0, H < cap
        rho = torch.where(has_c & ~has_f, torch.minimum(rho * (1 + _BIAS), rc[idx]),
                          torch.where(has_f & ~has_c, torch.maximum(rho * (1 - _BIAS), L), rho))
        both = has_c & has_f & deep
        for wide in (False, True):
            sel = both & ((H - ec[idx] > _PREDICT * tol) == wide)
            if not bool(sel.any()):
                continue
            si = sel.nonzero().squeeze(1)
            ib = idx[si]
            ca, fa = ec[ib], hi[ib]
            ints_c = _at([(CA[ib], CN[ib]) for CA, CN in store_c], ca.to(dt))
            ints_f = _at([(FA[ib], FN[ib]) for FA, FN in store_f], fa.to(dt))
            args = (Ws, bs, act, x0[ib], Cw[ib], Cb[ib], relu_lower, dt, ints_c, ints_f, ca, fa)
            if wide:
                rho[si], n = _predict_wide(*args, gc[ib], gf[ib])
                rho[si] = rho[si] + torch.where(ok[si], _WUP * (H[si] - L[si]), 0.0)
            else:
                rho[si], n = _predict(*args, gc[ib], gf[ib], lo[ib], hi[ib], tol[si])
            n_rebuilt += n
        # safeguards. The zero of a certified evaluation's line is (mostly) above the radius: stay below it. If
        # the bracket did not halve in two steps, bisect. Beside an end, step to within tol of it (that probe
        # closes the bracket if it lands on the other side); past the upper end before any failure, double.
        slow = (H - L > 0.5 * w_2[idx]) & (H < cap)
        w_2[idx], w_1[idx] = w_1[idx], H - L
        Hs = torch.where(ok, torch.minimum(H, rc[idx]), H)
        p = torch.where(slow, (L + Hs) / 2, torch.minimum(rho, Hs))
        p = torch.where(p >= H, torch.where(H >= cap, torch.minimum(2 * torch.maximum(L, e64), H), (L + H) / 2), p)
        p = torch.where((p > H - tol) & (H < cap), H - tol, p)
        p = torch.where(p < L + tol, torch.minimum(L + tol, (L + H) / 2), p)
        probe[idx] = p
        active = idx[H - L > tol]
    _STATS.update(full=n_full, rebuilt=n_rebuilt)
    return lo.to(dt), tgt


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


def radius_start(model, x0, y, targets, generator=None):
    """What every certified-radius search starts from (CROWN, IBP, CROWN-IBP here; COAP): the (B, K) target
    classes of the protocol ``targets``, radii 0, the initial binding target and the indices of the correctly
    classified points (the only ones searched; misclassified points keep radius 0). At ε = 0 every margin bound
    is the margin itself, so until a radius is certified the binding target is the one with the smallest margin."""
    model = models.as_network(model, models.input_shape_of(x0))
    B = x0.shape[0]
    with torch.no_grad():
        logits = model(x0)
    tt, _ = _targets(logits, y, targets, generator)
    radius = torch.zeros(B, dtype=x0.dtype, device=x0.device)
    margins = logits.gather(1, y.reshape(B, 1)) - logits.gather(1, tt)
    target = tt.gather(1, margins.argmin(1, keepdim=True)).squeeze(1)
    idx = (logits.argmax(1) == y).nonzero().squeeze(1)
    return tt, radius, target, idx


def certified_radius(model, x: torch.Tensor, y: torch.Tensor, targets="all", method: str = "crown",
                     steps: int = 20, eps_max: float = 4.0, relu_lower: str = "adaptive",
                     generator: torch.Generator | None = None) -> dict:
    """Largest ε (to bisection precision ``eps_max``/2^steps) at which every margin bound is positive.

    IBP bisects (:func:`bisect_radius`), the bracket [0, eps_max] doubled first while its upper end is still
    certified; CROWN and CROWN-IBP search to the same precision with fewer bound evaluations (module docstring):
    the returned radius is certified (every margin lower bound > 0 there, from the bound evaluated there or at a
    larger ε), and the bound evaluated at some ε within the precision above it fails.

    Returns a dict of per-point tensors ``radius`` (0 for misclassified points), ``target`` (the target whose
    bound is smallest at the returned radius), and ``time_s``.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method '{method}'; expected one of {METHODS}")
    t0 = time.perf_counter()
    model = models.as_network(model, models.input_shape_of(x))
    x0 = x.flatten(1).to(next(model.parameters()).dtype)
    tt, radius, target, idx = radius_start(model, x0, y, targets, generator)
    if idx.numel():
        xs, ys, ts = x0[idx], y[idx], tt[idx]
        if method == "ibp":
            @torch.no_grad()
            def check(eps):
                lb = margin_bounds(model, xs, ys, eps, ts, method, relu_lower)
                return lb.min(1).values > 0, ts.gather(1, lb.argmin(1, keepdim=True)).squeeze(1)

            radius[idx], target[idx] = bisect_radius(check, target[idx], eps_max, steps, x0.dtype)
        else:
            with torch.no_grad():
                radius[idx], target[idx] = _crown_radius(model, xs, ys, ts, method, steps, eps_max, relu_lower,
                                                         target[idx].clone())
    return {"radius": radius, "target": target, "time_s": time.perf_counter() - t0}
