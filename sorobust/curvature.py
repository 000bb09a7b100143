"""Curvature of the logit margin f(x) = z_y(x) − z_t(x): closed-form gradient, HVP and Hessian, and sound bounds
m ≤ λ(∇²f) ≤ M.

Notation (paper.md §1.1, §1.3): layers z^(k) = W^(k) a^(k−1) + b^(k), a^(k) = σ(z^(k)), a^(0) = x, k = 1…L, with
logits z^(L). For f = z_y − z_t the last layer enters only through w = W^(L)_y − W^(L)_t. We write
B^(k) = ∂z^(k)/∂x and F^(k) = ∂f/∂a^(k) (a row vector, N_k entries).

* :func:`hessian` is **Lemma 1**: ∇²f = Σ_{k=1}^{L−1} B^(k)ᵀ diag(F^(k) ⊙ σ''(z^(k))) B^(k), with B^(1) = W^(1),
  B^(k) = W^(k) diag(σ'(z^(k−1))) B^(k−1), F^(L−1) = w, F^(k) = (F^(k+1) ⊙ σ'(z^(k+1))) W^(k+1).
* :func:`bounds` gives (m, M) with m ≤ 0 ≤ M (paper sign convention):

  - ``kind="global"``: for L = 2 this is **Theorem 3** exactly, N = W1ᵀ diag(min(w h_L, w h_U)) W1,
    P = W1ᵀ diag(max(w h_L, w h_U)) W1, m = λ_min(N), M = λ_max(P). For L ≥ 3 it is the per-layer bound the
    reference code certifies with (paper.md §6 item 7), generalised to any depth: each Lemma-1 term k is bounded
    by the coefficient interval c^(k) ∋ F^(k) ⊙ σ''(z^(k)), where the interval of F^(k) over all x is propagated
    backwards from F^(L−1) = w by interval arithmetic with σ' ∈ [0, g]; then
    λ_max(term k) ≤ λ_max(W^(k)ᵀ diag(c⁺) W^(k)) · Π_{j<k} (g ‖W^(j)‖)², as B^(k) = W^(k) D B^(k−1) with
    ‖D B^(k−1)‖ ≤ Π_{j<k} g‖W^(j)‖. For L = 3 this equals the reference's formula term by term; for L = 4 the
    interval propagation is at least as tight as the reference's max(|neg|, pos) magnitudes.
  - ``kind="local"``: the same construction over the ball ‖x − x0‖ ≤ ρ, with per-neuron ranges of σ' and σ''
    on pre-activation intervals (exact for layer 1: z ∈ W1 x0 + b1 ± ρ‖W1_i‖₂; interval arithmetic after), and
    intersected with the global bound, so it is never looser.
  - ``kind="theorem4"``: (−K, K) with K of **Theorem 4** (the ICLR recipe "for L ≥ 3, M = K, m = −K").

  Soundness: eigenvalues are computed exactly (symmetric eigensolver in float64, never power iteration) and then
  widened by a rigorous bound on floating-point error (:func:`_sound_lmax`).
* Networks: every public function reads its ``model`` through :func:`sorobust.models.as_network`, so it takes the
  package's MLP and conv net and a user's ``nn.Sequential`` of Linear / Conv2d layers (several convolutions, any
  padding and stride: each an unrolled matrix W^(k), paper.md §1.3) with one smooth σ between them, any widths.
  σ's constants g, h_L, h_U come from :mod:`sorobust.activations` (softplus's β included); ReLU is refused with one
  line naming its layer.
* :func:`K` is Theorem 4's bound, differentiable in the weights (training regulariser, paper.md §1.5):
  K = h Σ_{k=1}^{L−1} r_k² max_j S^(k)_j, r_1 = ‖W1‖, r_k = g ‖W^(k)‖ r_{k−1}, S^(L−1) = |w|,
  S^(k) = g S^(k+1) |W^(k+1)|.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .activations import Activation
from .models import as_network, input_shape_of

_EPS64 = torch.finfo(torch.float64).eps


# ----------------------------------------------------------------------------------------------------------------
# margin function, its gradient and Hessian-vector products (closed form)
# ----------------------------------------------------------------------------------------------------------------


def _flat(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(1)


def _margin_weights(model, y: torch.Tensor, t: torch.Tensor):
    """w = W^(L)_y − W^(L)_t (B, N_{L−1}) and the bias difference (B,); ``model`` a Network."""
    last = model.ops()[-1]
    W, b = last.dense(), last.bias
    return W[y] - W[t], b[y] - b[t]


@dataclass
class MarginState:
    """f, ∇f and the quantities Lemma 1 and the HVP need, at a batch of points (closed form).

    Attributes:
        f: (B,) margins z_y − z_t.
        grad: (B, D) ∇ₓf.
        d1, d2: per hidden layer, σ'(z^(k)) and σ''(z^(k)), each (B, N_k).
        delta: per hidden layer, F^(k) = ∂f/∂a^(k) (B, N_k).
    """

    f: torch.Tensor
    grad: torch.Tensor
    d1: list
    d2: list
    delta: list
    ops: list

    def take(self, rows) -> "MarginState":
        """The state restricted to the points ``rows`` (a boolean mask or an index tensor)."""
        return MarginState(f=self.f[rows], grad=self.grad[rows], d1=[a[rows] for a in self.d1],
                           d2=[a[rows] for a in self.d2], delta=[a[rows] for a in self.delta], ops=self.ops)

    def hvp(self, v: torch.Tensor) -> torch.Tensor:
        """∇²f(x) v for v of shape (..., B, D) (Pearlmutter's R-operator on the closed-form backward pass).

        Costs one forward and one backward pass of the tangent through the hidden layers (for a 2-layer net:
        two matrix products, as in Lemma 1's W1ᵀ diag(w ⊙ σ'') W1 v).
        """
        n_hidden = len(self.d1)
        rz = []
        r = self.ops[0].apply(v)
        for k in range(n_hidden):
            rz.append(r)
            if k + 1 < n_hidden:
                r = self.ops[k + 1].apply(self.d1[k] * r)
        rdelta = None  # R(F^(L−1)) = 0: w does not depend on x
        for k in reversed(range(n_hidden)):
            rg = self.delta[k] * self.d2[k] * rz[k]
            if rdelta is not None:
                rg = rg + rdelta * self.d1[k]
            rdelta = self.ops[k].adjoint(rg)
        return rdelta


def margin_state(model, x: torch.Tensor, y: torch.Tensor, t: torch.Tensor) -> MarginState:
    """Margins f = z_y − z_t, their input gradients and the Lemma-1 quantities at the points ``x`` (B, …).

    ``model``: anything :func:`~sorobust.models.as_network` reads (a Network passes through at no cost)."""
    model = as_network(model, input_shape_of(x))
    act: Activation = model.activation
    ops = model.ops()
    a = _flat(x)
    d1, d2 = [], []
    for op in ops[:-1]:
        z = op.apply(a) + op.bias
        d1.append(act.d1(z))
        d2.append(act.d2(z))
        a = act.fn(z)
    w, bdiff = _margin_weights(model, y, t)
    f = (a * w).sum(-1) + bdiff
    delta = [None] * len(d1)
    g = w
    for k in reversed(range(len(d1))):
        delta[k] = g
        g = ops[k].adjoint(g * d1[k])
    return MarginState(f=f, grad=g, d1=d1, d2=d2, delta=delta, ops=ops)


def margin(model, x: torch.Tensor, y: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """f(x) = z_y(x) − z_t(x), shape (B,)."""
    z = as_network(model, input_shape_of(x))(x)
    idx = torch.arange(z.shape[0], device=z.device)
    return z[idx, y] - z[idx, t]


def hessian(model, x: torch.Tensor, y: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Closed-form Hessian ∇²ₓ(z_y − z_t) of **Lemma 1**, batched: x (B, …), y, t (B,) → (B, D, D).

    H = Σ_k B^(k)ᵀ diag(F^(k) ⊙ σ''(z^(k))) B^(k) with the recursions of paper.md §1.3 (eqs. 4–5); a convolution
    enters as its unrolled matrix (Lemma 1's extension to CNNs, paper.md §1.3). ``model``: anything
    :func:`~sorobust.models.as_network` reads, with a twice-differentiable activation.
    """
    model = as_network(model, input_shape_of(x))
    model.require_smooth()
    st = margin_state(model, x, y, t)
    ops = st.ops
    Bk = ops[0].dense().unsqueeze(0)  # (1, N1, D)
    H = None
    for k in range(len(st.d1)):
        if k > 0:
            Bk = ops[k].dense() @ (st.d1[k - 1].unsqueeze(-1) * Bk)
        coef = st.delta[k] * st.d2[k]
        term = Bk.transpose(-1, -2) @ (coef.unsqueeze(-1) * Bk)
        H = term if H is None else H + term
    return H.expand(x.shape[0], -1, -1) if H.shape[0] == 1 else H


# ----------------------------------------------------------------------------------------------------------------
# sound extreme eigenvalues
# ----------------------------------------------------------------------------------------------------------------


def _sound_lmax(W: torch.Tensor, c: torch.Tensor, gram: torch.Tensor | None = None,
                rfac: torch.Tensor | None = None) -> torch.Tensor:
    """Rigorous upper bound on λ_max(Wᵀ diag(c) W) for each row c of ``c`` (P, N); W is (N, D).

    Computed in float64 with a symmetric eigensolver, on the smallest matrix with the same nonzero spectrum:

    * N < D (``rfac`` = R of the thin QR factorisation Wᵀ = QR): Wᵀ C W = Q (R C Rᵀ) Qᵀ, so the spectrum is that
      of the N×N matrix R C Rᵀ plus D − N zeros;
    * c ≥ 0 with support S smaller than D: that of diag(√c_S) (W Wᵀ)_SS diag(√c_S) (``gram`` = W Wᵀ);
    * otherwise the D×D matrix Wᵀ C W itself.

    The result is widened by 8·n·ε·Σ_i |c_i| ‖W_i‖² (n = max(N, D)), which bounds the rounding error of forming
    the matrix (γ_n per entry, summed in Frobenius norm ≤ trace of the PSD majorant |W|ᵀ|C||W|) plus the
    backward error of the eigensolver (p(n)·ε·‖A‖₂, p(n) ≤ n for LAPACK's symmetric solvers); with the QR route
    by 8·n·ε·max|c|·‖W‖_F², which also covers the QR factorisation's backward error (≤ n·ε·‖W‖_F).
    """
    W = W.to(torch.float64)
    c = c.to(torch.float64)
    N, D = W.shape
    n = max(N, D)
    rownorm2 = (W * W).sum(1)
    fro2 = rownorm2.sum()
    out = torch.empty(c.shape[0], dtype=torch.float64, device=W.device)
    for i in range(c.shape[0]):  # loop over (y, t) pairs or points, not over matrix entries
        ci = c[i]
        if bool((ci <= 0).all()) and not bool((ci < 0).any()):
            out[i] = 0.0
            continue
        if rfac is not None and N < D:
            A = rfac @ (ci.unsqueeze(1) * rfac.T)
            lam = torch.linalg.eigvalsh(A)[-1].clamp(min=0)  # the D − N zero eigenvalues
            out[i] = lam + 8 * n * _EPS64 * ci.abs().max() * fro2 + 1e-300
            continue
        slack = 8 * n * _EPS64 * (ci.abs() * rownorm2).sum() + 1e-300
        if bool((ci >= 0).all()):
            S = ci > 0
            if int(S.sum()) < D:
                if gram is None:
                    gram = W @ W.T
                sq = ci[S].sqrt()
                A = sq.unsqueeze(1) * gram[S][:, S] * sq.unsqueeze(0)
                out[i] = torch.linalg.eigvalsh(A)[-1].clamp(min=0) + slack
                continue
        A = W.T @ (ci.unsqueeze(1) * W)
        out[i] = torch.linalg.eigvalsh(A)[-1] + slack
    return out


def _power_lmax(W: torch.Tensor, c: torch.Tensor, gram=None, rfac=None, iters: int = 50) -> torch.Tensor:
    """Power-iteration *estimate* of λ_max(Wᵀ diag(c) W) for rows c ≥ 0 (the reference code's
    ``power_iteration``, batched over rows). An under-estimate in general: for training only, never certificates."""
    c = c.to(W.dtype).clamp(min=0)
    gen = torch.Generator(device="cpu").manual_seed(0)
    v = torch.randn(c.shape[0], W.shape[1], generator=gen, dtype=W.dtype).to(W.device)
    v = v / v.norm(dim=1, keepdim=True)
    lam = torch.zeros(c.shape[0], dtype=W.dtype, device=W.device)
    for _ in range(iters):
        v = ((v @ W.T) * c) @ W
        lam = v.norm(dim=1)
        v = v / lam.clamp(min=1e-300).unsqueeze(1)
    return lam


def _spectral_norm_upper(W: torch.Tensor) -> torch.Tensor:
    """Rigorous upper bound on ‖W‖₂ (float64 singular values, widened by n·ε·‖W‖_F)."""
    W = W.to(torch.float64)
    s = torch.linalg.matrix_norm(W, ord=2)
    return s + max(W.shape) * _EPS64 * torch.linalg.matrix_norm(W) * 8


# ----------------------------------------------------------------------------------------------------------------
# curvature bounds
# ----------------------------------------------------------------------------------------------------------------


def _interval_mul_pos(lo, hi, slo, shi):
    """[lo, hi] · [slo, shi] for slo ≥ 0 (elementwise)."""
    return torch.minimum(lo * slo, lo * shi), torch.maximum(hi * slo, hi * shi)


def _interval_mul(lo, hi, alo, ahi):
    """[lo, hi] · [alo, ahi] (elementwise, general signs)."""
    c = torch.stack([lo * alo, lo * ahi, hi * alo, hi * ahi])
    return c.min(0).values, c.max(0).values


def _interval_matmul(lo, hi, W):
    """Interval of v W for v ∈ [lo, hi] (rows), W fixed; widened for float64 rounding."""
    c, r = (lo + hi) / 2, (hi - lo) / 2
    Wa = W.abs()
    mid = c @ W
    rad = r @ Wa
    rad = rad + 4 * W.shape[0] * _EPS64 * ((c.abs() + r) @ Wa)
    return mid - rad, mid + rad


def _layer_bounds(Ws, gram, w, act: Activation, s_ranges=None, h_ranges=None, s_norms=None, rfac=None,
                  lmax=_sound_lmax):
    """(m, M) for rows of ``w`` (P, N_{L−1}) from per-layer coefficient intervals (see module docstring).

    Args:
        Ws: dense float64 matrices W^(1) … W^(L−1) of the hidden layers.
        gram: list of W Wᵀ per hidden layer (or None), reused across calls.
        rfac: list of R factors of Wᵀ = QR per hidden layer with N < D (or None).
        w: (P, N_{L−1}) last-layer weight differences.
        s_ranges: per hidden layer (slo, shi) ranges of σ' (broadcastable to (P, N_k)); default [0, g].
        h_ranges: per hidden layer (hlo, hhi) ranges of σ''; default [h_L, h_U].
        s_norms: per hidden layer k ≥ 1, upper bounds on ‖diag(shi_k) W^(k)‖ (P,) ; default g ‖W^(k)‖.
    """
    n = len(Ws)
    dt = Ws[0].dtype  # float64 for bounds; the model's dtype for estimates
    w = w.to(dt)
    P = w.shape[0]
    zeros = torch.zeros((), dtype=dt, device=w.device)
    if s_ranges is None:
        s_ranges = [(zeros, zeros + act.g)] * n
    if h_ranges is None:
        h_ranges = [(zeros + act.h_lo, zeros + act.h_hi)] * n
    # F intervals, backwards from F^(L−1) = w
    F_lo, F_hi = [None] * n, [None] * n
    lo, hi = w, w
    for k in reversed(range(n)):
        F_lo[k], F_hi[k] = lo, hi
        if k > 0:
            glo, ghi = _interval_mul_pos(lo, hi, *s_ranges[k])
            lo, hi = _interval_matmul(glo, ghi, Ws[k])
    m = torch.zeros(P, dtype=dt, device=w.device)
    M = torch.zeros(P, dtype=dt, device=w.device)
    factor = torch.ones(P, dtype=dt, device=w.device)
    rfac = rfac if rfac is not None else [None] * n
    for k in range(n):
        cl, cu = _interval_mul(F_lo[k], F_hi[k], *h_ranges[k])
        cl, cu = cl.expand(P, -1), cu.expand(P, -1)
        if k == 0:
            M = M + lmax(Ws[0], cu, gram[0], rfac[0])
            m = m - lmax(Ws[0], -cl, gram[0], rfac[0])
        else:
            M = M + factor * lmax(Ws[k], cu.clamp(min=0), gram[k], rfac[k])
            m = m - factor * lmax(Ws[k], (-cl).clamp(min=0), gram[k], rfac[k])
        if k + 1 < n:
            factor = factor * s_norms[k] ** 2
    return m.clamp(max=0), M.clamp(min=0)


class CurvatureBounds:
    """Sound curvature bounds for one model, with the weight-only work done once and reused.

    Global bounds depend only on the (y, t) pair, so they are computed once per unordered pair and cached
    (``bounds(t, y) = (−M, −m)`` of ``bounds(y, t)``, since w flips sign). Use :meth:`all_pairs` to fill the
    table for every pair up front.

    ``estimate=True`` replaces the exact eigenvalues and spectral norms by ``iters`` power iterations in the
    model's dtype (50, as the reference code): cheaper, but an under-estimate. It is meant for the attack inside
    training (CRT), where m and M only set step sizes and η ranges, never for certificates.
    """

    def __init__(self, model, estimate: bool = False, iters: int = 50):
        model = as_network(model)  # a Network, the package's nets or a user's nn.Sequential (models.as_network)
        model.require_smooth()
        act: Activation = model.activation
        self.model = model
        self.act = act
        self.estimate = estimate
        self._power = lambda W, c, gram=None, rfac=None: _power_lmax(W, c, iters=iters)
        dt = next(model.parameters()).dtype if estimate else torch.float64
        with torch.no_grad():
            ops = model.ops()
            self.Ws = [op.dense().detach().to(dt) for op in ops[:-1]]
            self.W_last = ops[-1].dense().detach().to(dt)
            self.gram = [None] * len(self.Ws)
            if estimate:
                self.rfac = [None] * len(self.Ws)
                ones = [torch.ones(1, W.shape[0], dtype=dt, device=W.device) for W in self.Ws]
                self.norms = [self._power(W, o)[0].sqrt() for W, o in zip(self.Ws, ones)]
            else:
                # thin QR of Wᵀ for narrow layers (N < D): eigen-problems shrink to N×N
                self.rfac = [torch.linalg.qr(W.T, mode="r").R if W.shape[0] < W.shape[1] else None
                             for W in self.Ws]
                self.norms = [_spectral_norm_upper(W) for W in self.Ws]
        self._pairs: dict[tuple, tuple] = {}

    @property
    def n_classes(self) -> int:
        return self.W_last.shape[0]

    def _global_pairs(self, pairs: list[tuple]):
        todo = [p for p in pairs if p not in self._pairs and (p[1], p[0]) not in self._pairs and p[0] != p[1]]
        todo = list(dict.fromkeys(todo))
        if not todo:
            return
        for k, W in enumerate(self.Ws):
            if self.gram[k] is None and W.shape[0] < 4 * W.shape[1] and not self.estimate:
                self.gram[k] = W @ W.T
        yy = torch.tensor([p[0] for p in todo], device=self.W_last.device)
        tt = torch.tensor([p[1] for p in todo], device=self.W_last.device)
        w = self.W_last[yy] - self.W_last[tt]
        s_norms = [self.act.g * nrm for nrm in self.norms]
        with torch.no_grad():
            m, M = _layer_bounds(self.Ws, self.gram, w, self.act, s_norms=s_norms, rfac=self.rfac,
                                 lmax=self._power if self.estimate else _sound_lmax)
        for i, p in enumerate(todo):
            self._pairs[p] = (float(m[i]), float(M[i]))

    def pair(self, y: int, t: int) -> tuple[float, float]:
        """(m, M) for the pair (y, t), from the cache."""
        if (y, t) in self._pairs:
            return self._pairs[(y, t)]
        if (t, y) in self._pairs:
            m, M = self._pairs[(t, y)]
            return -M, -m
        self._global_pairs([(y, t)])
        return self.pair(y, t)

    def all_pairs(self):
        """Compute every (y, t) pair (C(C−1)/2 eigen-problems per bound)."""
        C = self.n_classes
        self._global_pairs([(i, j) for i in range(C) for j in range(i + 1, C)])
        return self

    def global_(self, y: torch.Tensor, t: torch.Tensor):
        """(m, M) tensors (B,) for label/target tensors."""
        pairs = list(zip(y.tolist(), t.tolist()))
        self._global_pairs(pairs)
        mm = torch.tensor([self.pair(a, b) for a, b in pairs], dtype=torch.float64, device=y.device)
        if mm.numel() == 0:
            mm = mm.reshape(0, 2)
        return mm[:, 0], mm[:, 1]

    def local(self, x: torch.Tensor, y: torch.Tensor, t: torch.Tensor, rho):
        """(m, M) valid on the balls ‖x' − x‖ ≤ rho around each point (B,), intersected with the global bounds.

        Pre-activation intervals: layer 1 exact over the ℓ2 ball (z_i ∈ W1_i x + b1_i ± ρ‖W1_i‖₂), deeper layers
        by interval arithmetic (σ is monotone). σ' and σ'' ranges per neuron come from
        :meth:`Activation.d1_range`/:meth:`Activation.d2_range`.
        """
        act = self.act
        ops = self.model.ops()
        B = x.shape[0]
        with torch.no_grad():
            x = _flat(x).to(torch.float64)
            rho = torch.as_tensor(rho, dtype=torch.float64).reshape(-1, 1).expand(B, 1)
            biases = [op.bias.detach().to(torch.float64) for op in ops[:-1]]
            W1 = self.Ws[0]
            c = x @ W1.T + biases[0]
            r = rho * W1.norm(dim=1)
            r = r + 4 * W1.shape[1] * _EPS64 * ((x.abs() @ W1.abs().T) + r)
            lo, hi = c - r, c + r
            s_ranges, h_ranges, s_norms = [], [], []
            for k in range(len(self.Ws)):
                s_ranges.append(act.d1_range(lo, hi))
                h_ranges.append(act.d2_range(lo, hi))
                s_norms.append(s_ranges[-1][1].max(dim=1).values * self.norms[k])
                if k + 1 < len(self.Ws):
                    alo, ahi = act.fn(lo), act.fn(hi)
                    alo, ahi = alo - 1e-12 * alo.abs(), ahi + 1e-12 * ahi.abs()
                    lo, hi = _interval_matmul(alo, ahi, self.Ws[k + 1].T)
                    lo, hi = lo + biases[k + 1], hi + biases[k + 1]
            w = self.W_last[y.to(self.W_last.device)] - self.W_last[t.to(self.W_last.device)]
            m, M = _layer_bounds(self.Ws, self.gram, w, act, s_ranges, h_ranges, s_norms, rfac=self.rfac)
        mg, Mg = self.global_(y, t)
        return torch.maximum(m, mg), torch.minimum(M, Mg)

    def theorem4(self, y: torch.Tensor, t: torch.Tensor):
        """(−K, K) with Theorem 4's K (sound spectral norms)."""
        with torch.no_grad():
            y, t = y.to(self.W_last.device), t.to(self.W_last.device)
            k = _K_from(self.Ws, self.norms, self.W_last[y] - self.W_last[t], self.act)
        return -k, k


def bounds(model, y: torch.Tensor, t: torch.Tensor, kind: str = "global", x: torch.Tensor | None = None,
           rho=None, cache: CurvatureBounds | None = None):
    """Sound curvature bounds m ≤ λ(∇²ₓ(z_y − z_t)) ≤ M, tensors of shape (B,) with m ≤ 0 ≤ M.

    Args:
        model: any network :func:`~sorobust.models.as_network` reads (the package's MLP or conv net, a user's
            nn.Sequential), with a twice-differentiable activation.
        y, t: (B,) labels and targets.
        kind: ``"global"`` (valid for all x ∈ R^D), ``"local"`` (valid on ‖x' − x‖ ≤ rho; needs x and rho) or
            ``"theorem4"`` (±K of Theorem 4).
        cache: a :class:`CurvatureBounds` to reuse across calls (per-pair global bounds are cached inside).
    """
    cb = cache if cache is not None else CurvatureBounds(as_network(model, None if x is None else input_shape_of(x)))
    if kind == "global":
        return cb.global_(y, t)
    if kind == "local":
        if x is None or rho is None:
            raise ValueError("local bounds need the centres x and the radius rho")
        return cb.local(x, y, t, rho)
    if kind == "theorem4":
        return cb.theorem4(y, t)
    raise ValueError(f"unknown bound kind '{kind}'; expected global, local or theorem4")


def _K_from(Ws, norms, w, act: Activation):
    g, h = act.g, act.h
    n = len(Ws)
    r2 = [None] * n
    r = norms[0]
    r2[0] = r * r
    for k in range(1, n):
        r = g * norms[k] * r
        r2[k] = r * r
    S = w.abs()
    total = r2[n - 1] * S.max(dim=-1).values
    for k in reversed(range(n - 1)):
        S = g * (S @ Ws[k + 1].abs())
        total = total + r2[k] * S.max(dim=-1).values
    return h * total


def K(model, y: torch.Tensor, t: torch.Tensor, norms: list | None = None) -> torch.Tensor:
    """Theorem 4's curvature bound K(W, y, t) (B,), differentiable in the weights (paper.md §1.5).

    ‖∇²ₓ(z_y − z_t)‖₂ ≤ K for all x. Spectral norms are exact (``torch.linalg.matrix_norm(ord=2)``) unless
    ``norms`` supplies them (e.g. :class:`SpectralNorms` during training); their gradient is u vᵀ
    (Miyato et al. 2018), as the paper's ``MatrixNorm``.
    """
    model = as_network(model)
    model.require_smooth()
    act = model.activation
    ops = model.ops()
    Ws = [op.dense() for op in ops[:-1]]
    if norms is None:
        norms = [torch.linalg.matrix_norm(W, ord=2) for W in Ws]
    last = ops[-1].dense()
    return _K_from(Ws, norms, last[y] - last[t], act)


class SpectralNorms:
    """Differentiable spectral norms ‖W^(k)‖ of a model's hidden layers by persistent power iteration.

    As in spectral normalisation (Miyato et al. 2018): the singular vectors (u, v) persist across calls and get
    ``n_iter`` power steps each time, so a slowly changing W is tracked cheaply; σ = uᵀ W v is differentiable
    with gradient u vᵀ, the gradient of the exact norm at convergence. Meant for the training regulariser γK,
    where an exact SVD per step is too costly; certificates use exact norms. ``state()``/``load()`` carry the
    vectors through checkpoints so a resumed run is bitwise identical.
    """

    def __init__(self, model, n_iter: int = 2, seed: int = 0):
        self.model, self.n_iter = model, n_iter
        gen = torch.Generator().manual_seed(seed)
        self.u = []
        for op in as_network(model).ops()[:-1]:
            W = op.dense()
            self.u.append(torch.randn(W.shape[0], generator=gen, dtype=W.dtype).to(W.device))
        self.u = [u / u.norm() for u in self.u]

    def __call__(self) -> list:
        norms = []
        for k, op in enumerate(as_network(self.model).ops()[:-1]):
            W = op.dense()
            with torch.no_grad():
                u = self.u[k]
                for _ in range(self.n_iter):
                    v = W.T @ u
                    v = v / v.norm().clamp(min=1e-30)
                    u = W @ v
                    u = u / u.norm().clamp(min=1e-30)
                self.u[k] = u
            norms.append(u @ W @ v)
        return norms

    def state(self) -> list:
        return [u.detach().cpu().clone() for u in self.u]

    def load(self, state: list) -> None:
        self.u = [u.to(w.device, w.dtype) for u, w in zip(state, self.u)]


def bounds_and_hessian_norms(model, x: torch.Tensor, y: torch.Tensor, chunk: int = 64):
    """For every point of ``x`` and every wrong class t: Theorem 4's curvature bound K(W, y, t) (:func:`K`, the
    figure's K_ub) and the spectral norm of the exact Hessian of z_y − z_t at the point (Lemma 1's closed form,
    :func:`hessian`, through exact symmetric eigenvalues; the figure's K_lb, a lower bound on the global curvature).

    Returns (ys, ts, K_ub, hessian_norm), each (B·(C − 1),), ordered point by point with the wrong classes of each
    point in increasing order; the Hessians are computed ``chunk`` (point, target) pairs at a time.
    """
    n_cls = model.n_classes
    B = len(y)
    allc = torch.arange(n_cls, device=y.device).expand(B, n_cls)
    ts = allc[allc != y.reshape(B, 1)].reshape(B, n_cls - 1).reshape(-1)
    ys = y.repeat_interleave(n_cls - 1)
    xs = x.repeat_interleave(n_cls - 1, dim=0)
    with torch.no_grad():
        k_ub = K(model, ys, ts)
        norms = torch.cat([torch.linalg.eigvalsh(hessian(model, xs[j:j + chunk], ys[j:j + chunk],
                                                         ts[j:j + chunk])).abs().amax(-1)
                           for j in range(0, len(ys), chunk)])
    return ys, ts, k_ub, norms
