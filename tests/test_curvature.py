"""Tests for sorobust.curvature against independent references.

* Hessians, gradients and HVPs against torch.autograd / torch.func (which never see Lemma 1).
* Soundness of global and local curvature bounds at random and adversarially chosen points (gradient ascent on
  eigenvalues of the torch.func Hessian), zero violations.
* Exact values: Theorem 3 (two-layer and conv nets) and the reference code's three-layer formula (paper.md §6
  item 7), both re-derived here in numpy with exact eigenvalues; Theorem 4's K from paper.md §1.5.

Everything runs in float64 on small random nets, single-threaded (the matrices are tiny).
"""

import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn as nn

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from torch.func import functional_call, grad, jacfwd, jacrev, vmap

from sorobust import curvature, models
from sorobust.errors import SorobustError
from np_oracles import conv_matrix_np

pytestmark = pytest.mark.filterwarnings("ignore:.*torch.jit.script.*:FutureWarning")

SMOOTH = ("sigmoid", "tanh", "softplus")
_S3 = math.sqrt(3.0)
# Activation constants derived by hand (sup |σ'|, inf σ'', sup σ''):
#   sigmoid σ' = s(1−s) ≤ 1/4, σ'' = s(1−s)(1−2s) extreme where 6s² − 6s + 1 = 0, i.e. ±1/(6√3);
#   tanh σ' = 1 − t² ≤ 1, σ'' = −2t(1 − t²) extreme at t = ±1/√3, i.e. ±4/(3√3);
#   softplus σ' = sigmoid < 1, σ'' = s(1−s) ∈ (0, 1/4].
CONST = {
    "sigmoid": {"g": 0.25, "hL": -1 / (6 * _S3), "hU": 1 / (6 * _S3)},
    "tanh": {"g": 1.0, "hL": -4 / (3 * _S3), "hU": 4 / (3 * _S3)},
    "softplus": {"g": 1.0, "hL": 0.0, "hU": 0.25},
}

MLP_SPECS = [("mlp", a, d) for a in SMOOTH for d in (2, 3, 4)]
CNN_SPECS = [("cnn", a, s) for a in SMOOTH for s in (1, 2)]
ALL_SPECS = MLP_SPECS + CNN_SPECS
TWO_LAYER_SPECS = [s for s in MLP_SPECS if s[2] == 2] + CNN_SPECS


def spec_id(spec):
    kind, act, p = spec
    return f"{kind}-{act}-{'L' if kind == 'mlp' else 's'}{p}"


pytestmark = pytest.mark.usefixtures("float64_single_thread")


_NETS = {}


def net_for(spec):
    """A small random float64 net (MLP 8-12^(L-1)-4, or conv 1x7x7 → 2 filters 3x3 → 3 classes)."""
    if spec not in _NETS:
        kind, act, p = spec
        torch.manual_seed(1000 + 17 * ALL_SPECS.index(spec))
        if kind == "mlp":
            net = models.mlp(p, 12, act, in_dim=8, n_classes=4)
        else:
            net = models.cnn(channels=2, kernel=3, stride=p, activation=act, in_shape=(1, 7, 7), n_classes=3)
        net = net.double().eval()
        with torch.no_grad():
            for name, prm in net.named_parameters():
                if name.endswith("weight"):
                    prm.mul_(2.0)  # more curvature than the default init
                else:
                    prm.uniform_(-1.0, 1.0)
        for prm in net.parameters():
            prm.requires_grad_(False)
        _NETS[spec] = net
    return _NETS[spec]


def dims(net):
    D = net.in_dim
    C = net.n_classes
    return D, C


def ordered_pairs(C):
    return [(y, t) for y in range(C) for t in range(C) if y != t]


def layers_np(net):
    """Dense numpy matrices W^(1) … W^(L) (the conv unrolled independently of the package)."""
    if isinstance(net, models.MLP):
        return [getattr(net, f"fc{i + 1}").weight.detach().numpy().copy() for i in range(net.depth)]
    A, _ = conv_matrix_np(net.conv1.weight.detach().numpy(), net.in_shape, net.stride)
    return [A, net.fc2.weight.detach().numpy().copy()]


def ref_logit_hessians(net, X):
    """∇²ₓ z_c(x) for every class c by torch.func (forward-over-reverse), X (P, D) → (P, C, D, D)."""
    f = lambda xx: net(xx[None])[0]  # noqa: E731
    return vmap(jacfwd(jacrev(f)))(X)


def global_bounds(net):
    """{(y, t): (m, M)} from one call of curvature.bounds over every ordered pair."""
    _, C = dims(net)
    pr = ordered_pairs(C)
    y = torch.tensor([p[0] for p in pr])
    t = torch.tensor([p[1] for p in pr])
    m, M = curvature.bounds(net, y, t)
    assert m.shape == (len(pr),) and M.shape == (len(pr),)
    return {p: (float(m[i]), float(M[i])) for i, p in enumerate(pr)}


def _violations(lmin, lmax, m, M, what):
    """Messages for eigenvalues outside [m, M] beyond 1e-12 relative slack (tensors of any shape)."""
    assert bool(torch.isfinite(lmin).all()) and bool(torch.isfinite(lmax).all()), what
    assert math.isfinite(m) and math.isfinite(M), what
    tol = 1e-12 * max(abs(m), abs(M))
    out = []
    hi = lmax - M
    lo = m - lmin
    if bool((hi > tol).any()):
        out.append(f"{what}: λmax {lmax.max().item():.17g} > M {M:.17g}")
    if bool((lo > tol).any()):
        out.append(f"{what}: λmin {lmin.min().item():.17g} < m {m:.17g}")
    return out


def adversarial_eigs(net, X0, E, steps, lr, project=None):
    """Gradient ascent (Adam) on λmax(∇²ₓ(z·e)) from each start (rows of X0, E).

    Returns the (λmin, λmax) of ∇²(z·e) at every iterate, shape (steps + 1, S, 2), and the final points.
    Eigenvalues come from torch.linalg.eigvalsh of the torch.func Hessian; gradients flow through both.
    """

    def lam(x, e):
        H = jacfwd(jacrev(lambda xx: net(xx[None])[0] @ e))(x)
        ev = torch.linalg.eigvalsh(H)
        return ev[-1], ev

    gfn = vmap(grad(lam, has_aux=True))
    X = X0.clone()
    m1 = torch.zeros_like(X)
    m2 = torch.zeros_like(X)
    b1, b2 = 0.9, 0.999
    rec = []
    for k in range(steps):
        gr, ev = gfn(X, E)
        rec.append(torch.stack([ev[:, 0], ev[:, -1]], -1))
        m1 = b1 * m1 + (1 - b1) * gr
        m2 = b2 * m2 + (1 - b2) * gr * gr
        step = (m1 / (1 - b1 ** (k + 1))) / ((m2 / (1 - b2 ** (k + 1))).sqrt() + 1e-12)
        X = X + lr * step
        if project is not None:
            X = project(X)
    _, ev = gfn(X, E)
    rec.append(torch.stack([ev[:, 0], ev[:, -1]], -1))
    return torch.stack(rec), X


# ------------------------------------------------------------------------------------------------------------
# Hessian, gradient, HVP
# ------------------------------------------------------------------------------------------------------------


def _random_pairs(gen, C, B):
    y = torch.randint(0, C, (B,), generator=gen)
    t = (y + torch.randint(1, C, (B,), generator=gen)) % C
    return y, t


@pytest.mark.parametrize("spec", ALL_SPECS, ids=spec_id)
def test_hessian_matches_autograd(spec):
    net = net_for(spec)
    D, C = dims(net)
    gen = torch.Generator().manual_seed(11)
    X = torch.randn(6, D, generator=gen) * torch.tensor([0.3, 1.0, 1.0, 2.0, 3.0, 5.0])[:, None]
    y, t = _random_pairs(gen, C, 6)
    H = curvature.hessian(net, X, y, t)
    assert H.shape == (6, D, D)
    for i in range(6):
        f = lambda x: curvature.margin(net, x[None], y[i : i + 1], t[i : i + 1])[0]  # noqa: E731
        Href = torch.autograd.functional.hessian(f, X[i])
        rel = (torch.linalg.matrix_norm(H[i] - Href) / torch.linalg.matrix_norm(Href)).item()
        assert rel <= 1e-8, (i, rel)
    if spec[0] == "cnn":  # image-shaped input gives the same Hessian
        torch.testing.assert_close(curvature.hessian(net, X.reshape(6, 1, 7, 7), y, t), H, rtol=0, atol=0)


def test_margin_is_logit_difference():
    net = net_for(("mlp", "tanh", 3))
    gen = torch.Generator().manual_seed(12)
    X = torch.randn(5, 8, generator=gen)
    y, t = _random_pairs(gen, 4, 5)
    z = net(X)
    want = torch.stack([z[i, y[i]] - z[i, t[i]] for i in range(5)])
    torch.testing.assert_close(curvature.margin(net, X, y, t), want, rtol=0, atol=0)


@pytest.mark.parametrize("spec", ALL_SPECS, ids=spec_id)
def test_margin_state_grad_and_hvp(spec):
    net = net_for(spec)
    D, C = dims(net)
    gen = torch.Generator().manual_seed(13)
    B = 5
    X = torch.randn(B, D, generator=gen) * 1.5
    y, t = _random_pairs(gen, C, B)
    st = curvature.margin_state(net, X, y, t)
    idx = torch.arange(B)
    # f and ∇f against autograd
    Xg = X.clone().requires_grad_(True)
    z = net(Xg)
    f = z[idx, y] - z[idx, t]
    (g_ref,) = torch.autograd.grad(f.sum(), Xg)
    torch.testing.assert_close(st.f, f.detach(), rtol=1e-12, atol=1e-12)
    assert st.grad.shape == (B, D)
    scale = g_ref.norm(dim=1, keepdim=True)
    assert ((st.grad - g_ref).norm(dim=1, keepdim=True) <= 1e-10 * scale).all()
    # HVP against the torch.func Hessian
    Hall = ref_logit_hessians(net, X)
    H = Hall[idx, y] - Hall[idx, t]
    Hn = torch.linalg.matrix_norm(H, ord=2)  # (B,)
    v = torch.randn(B, D, generator=gen)
    hv = st.hvp(v)
    want = torch.einsum("bij,bj->bi", H, v)
    assert hv.shape == (B, D)
    err = (hv - want).norm(dim=-1)
    assert (err <= 1e-10 * Hn * v.norm(dim=-1)).all(), err
    v2 = torch.randn(2, B, D, generator=gen)
    hv2 = st.hvp(v2)
    want2 = torch.einsum("bij,kbj->kbi", H, v2)
    assert hv2.shape == (2, B, D)
    err2 = (hv2 - want2).norm(dim=-1)
    assert (err2 <= 1e-10 * Hn * v2.norm(dim=-1)).all(), err2


def test_relu_refused():
    torch.manual_seed(0)
    net = models.mlp(2, 6, "relu", in_dim=5, n_classes=3).double()
    y, t = torch.tensor([0]), torch.tensor([1])
    with pytest.raises(SorobustError):
        curvature.hessian(net, torch.zeros(1, 5), y, t)
    with pytest.raises(SorobustError):
        curvature.CurvatureBounds(net)
    with pytest.raises(SorobustError):
        curvature.bounds(net, y, t)
    with pytest.raises(SorobustError):
        curvature.K(net, y, t)


# ------------------------------------------------------------------------------------------------------------
# global bounds: soundness
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("spec", ALL_SPECS, ids=spec_id)
def test_global_bounds_sound(spec):
    net = net_for(spec)
    D, C = dims(net)
    bnd = global_bounds(net)
    for (m, M) in bnd.values():
        assert m <= 0.0 <= M
        assert math.isfinite(m) and math.isfinite(M)
    gen = torch.Generator().manual_seed(21)
    # random points: Gaussians of several scales, a box, and sparse large coordinates
    parts = [torch.randn(100, D, generator=gen) * s for s in (0.1, 0.5, 1.0, 2.0, 5.0)]
    parts.append((torch.rand(60, D, generator=gen) * 2 - 1) * 3)
    sparse = torch.randn(40, D, generator=gen) * 8 * (torch.rand(40, D, generator=gen) < 0.2)
    parts.append(sparse)
    X = torch.cat(parts)
    assert X.shape[0] >= 500
    Hall = ref_logit_hessians(net, X)
    problems = []
    for (y, t), (m, M) in bnd.items():
        ev = torch.linalg.eigvalsh(Hall[:, y] - Hall[:, t])
        problems += _violations(ev[:, 0], ev[:, -1], m, M, f"random pair {(y, t)}")
    # adversarial points: maximise λmax(∇²(z_y − z_t)) for every ordered pair (λmin is covered by the reverse
    # pair, whose Hessian is the negative), from starts of several scales
    pr = ordered_pairs(C)
    S = 24
    starts_pairs = [pr[i % len(pr)] for i in range(S)]
    scales = torch.tensor([[0.5, 1.0, 2.0, 4.0][(i // len(pr)) % 4] for i in range(S)])[:, None]
    X0 = torch.randn(S, D, generator=gen) * scales
    E = torch.zeros(S, C)
    for i, (y, t) in enumerate(starts_pairs):
        E[i, y], E[i, t] = 1.0, -1.0
    rec, _ = adversarial_eigs(net, X0, E, steps=40, lr=0.1)
    assert rec.shape[0] * rec.shape[1] >= 500
    best = {}
    for i, (y, t) in enumerate(starts_pairs):
        m, M = bnd[(y, t)]
        problems += _violations(rec[:, i, 0], rec[:, i, 1], m, M, f"adversarial pair {(y, t)}")
        best[(y, t)] = max(best.get((y, t), -math.inf), rec[:, i, 1].max().item())
    assert not problems, problems
    # the search does find curvature (it is not stuck at zero)
    assert max(best.values()) > 0


# ------------------------------------------------------------------------------------------------------------
# global bounds: exact values
# ------------------------------------------------------------------------------------------------------------


def _lmax_np(W, d):
    """λ_max(Wᵀ diag(d) W) by numpy's dense symmetric eigensolver."""
    return float(np.linalg.eigvalsh(W.T @ (d[:, None] * W))[-1])


def theorem3_np(W1, w, act):
    c = CONST[act]
    a, b = w * c["hL"], w * c["hU"]
    N = W1.T @ (np.minimum(a, b)[:, None] * W1)
    P = W1.T @ (np.maximum(a, b)[:, None] * W1)
    return float(np.linalg.eigvalsh(N)[0]), float(np.linalg.eigvalsh(P)[-1])


def reference_L3_np(W1, W2, w, act):
    """The reference code's three-layer curvature_bound (paper.md §6 item 7), exact eigenvalues.

    Term I=2: g²‖W1‖²·h·λ(W2ᵀ diag(w±) W2) (softplus: w⁺ for M, w⁻ for m; sigmoid/tanh: |w| for both).
    Term I=1: h·λ(W1ᵀ diag(d) W1), d from T_ij = g w_i W2_ij: pos_j = Σ_i max(T_ij, 0), neg_j = Σ_i min(T_ij, 0);
    softplus uses pos for M and −neg for m, sigmoid/tanh use max(|neg|, pos) for both.
    Returns (m, M) in the paper sign convention (m ≤ 0 ≤ M).
    """
    c = CONST[act]
    g, h = c["g"], max(-c["hL"], c["hU"])
    T = g * w[:, None] * W2
    pos, neg = np.clip(T, 0, None).sum(0), np.clip(T, None, 0).sum(0)
    n1sq = np.linalg.norm(W1, 2) ** 2
    if act == "softplus":
        right_M, right_m = _lmax_np(W1, pos), _lmax_np(W1, -neg)
        left_M = g * g * n1sq * _lmax_np(W2, np.clip(w, 0, None))
        left_m = g * g * n1sq * _lmax_np(W2, np.clip(-w, 0, None))
    else:
        d = np.maximum(np.abs(neg), pos)
        right_M = right_m = _lmax_np(W1, d)
        left_M = left_m = g * g * n1sq * _lmax_np(W2, np.abs(w))
    return -h * (left_m + right_m), h * (left_M + right_M)


def reference_L4_np(W1, W2, W3, w, act):
    """The reference code's four-layer curvature_bound (paper.md §6 item 7), exact eigenvalues.

    T_ij = g w_i W3_ij, pos3/neg3 its positive/negative column sums, d3 = max(|neg3|, pos3), d2 = g·d3ᵀ|W2|.
    I=1: h·λmax(W1ᵀ diag(d2) W1) for both m and M.
    I=2: g²‖W1‖²·h·λ(W2ᵀ diag(·) W2) with pos3 / −neg3 (softplus) or d3 (sigmoid/tanh).
    I=3: g⁴‖W1‖²‖W2‖²·h·λ(W3ᵀ diag(·) W3) with w⁺ / w⁻ (softplus) or |w| (sigmoid/tanh).
    """
    c = CONST[act]
    g, h = c["g"], max(-c["hL"], c["hU"])
    T = g * w[:, None] * W3
    pos3, neg3 = np.clip(T, 0, None).sum(0), np.clip(T, None, 0).sum(0)
    d3 = np.maximum(np.abs(neg3), pos3)
    d2 = g * (d3 @ np.abs(W2))
    left = _lmax_np(W1, d2)
    n1sq, n2sq = np.linalg.norm(W1, 2) ** 2, np.linalg.norm(W2, 2) ** 2
    f2, f3 = g**2 * n1sq, g**4 * n1sq * n2sq
    if act == "softplus":
        mid_M, mid_m = f2 * _lmax_np(W2, pos3), f2 * _lmax_np(W2, -neg3)
        right_M, right_m = f3 * _lmax_np(W3, np.clip(w, 0, None)), f3 * _lmax_np(W3, np.clip(-w, 0, None))
    else:
        mid_M = mid_m = f2 * _lmax_np(W2, d3)
        right_M = right_m = f3 * _lmax_np(W3, np.abs(w))
    return -h * (left + mid_m + right_m), h * (left + mid_M + right_M)


def theorem4_K_np(Ws, w, act):
    """Theorem 4's K from the explicit formulas of paper.md §1.5 (L = 2, 3, 4), numpy spectral norms."""
    c = CONST[act]
    g, h = c["g"], max(-c["hL"], c["hU"])
    aw = np.abs(w)
    n = [np.linalg.norm(W, 2) for W in Ws[:-1]]
    L = len(Ws)
    if L == 2:
        return h * n[0] ** 2 * aw.max()
    if L == 3:
        W2 = Ws[1]
        return h * (n[0] ** 2 * (g * aw @ np.abs(W2)).max() + g**2 * n[0] ** 2 * n[1] ** 2 * aw.max())
    if L == 4:
        W2, W3 = Ws[1], Ws[2]
        return h * (
            n[0] ** 2 * (g**2 * aw @ np.abs(W3) @ np.abs(W2)).max()
            + g**2 * n[0] ** 2 * n[1] ** 2 * (g * aw @ np.abs(W3)).max()
            + g**4 * n[0] ** 2 * n[1] ** 2 * n[2] ** 2 * aw.max()
        )
    raise AssertionError(L)


def _close(a, b, rtol, what):
    assert abs(a - b) <= rtol * max(abs(a), abs(b)) + 1e-300, f"{what}: {a!r} vs {b!r}"


@pytest.mark.parametrize("spec", TWO_LAYER_SPECS, ids=spec_id)
def test_two_layer_bound_is_theorem3(spec):
    net = net_for(spec)
    act = spec[1]
    W1, W2 = layers_np(net)
    for (y, t), (m, M) in global_bounds(net).items():
        w = W2[y] - W2[t]
        m_ref, M_ref = theorem3_np(W1, w, act)
        assert m_ref <= 0 <= M_ref  # Theorem 3(b): N is NSD, P is PSD
        _close(m, m_ref, 1e-9, f"m {(y, t)}")
        _close(M, M_ref, 1e-9, f"M {(y, t)}")
        # the code widens outwards, never inwards
        assert m <= m_ref + 1e-14 * abs(m_ref) and M >= M_ref - 1e-14 * abs(M_ref)
        if act in ("sigmoid", "tanh"):
            _close(m, -M, 1e-12, f"m = -M {(y, t)}")


@pytest.mark.parametrize("act", SMOOTH)
def test_three_layer_bound_is_reference_formula(act):
    net = net_for(("mlp", act, 3))
    W1, W2, W3 = layers_np(net)
    for (y, t), (m, M) in global_bounds(net).items():
        m_ref, M_ref = reference_L3_np(W1, W2, W3[y] - W3[t], act)
        _close(m, m_ref, 1e-8, f"m {(y, t)}")
        _close(M, M_ref, 1e-8, f"M {(y, t)}")


@pytest.mark.parametrize("act", SMOOTH)
def test_four_layer_bound_at_most_reference_formula(act):
    net = net_for(("mlp", act, 4))
    W1, W2, W3, W4 = layers_np(net)
    for (y, t), (m, M) in global_bounds(net).items():
        m_ref, M_ref = reference_L4_np(W1, W2, W3, W4[y] - W4[t], act)
        assert M <= M_ref * (1 + 1e-9), ((y, t), M, M_ref)
        assert -m <= -m_ref * (1 + 1e-9), ((y, t), m, m_ref)


@pytest.mark.parametrize("spec", ALL_SPECS, ids=spec_id)
def test_bounds_within_theorem4_K(spec):
    net = net_for(spec)
    act = spec[1]
    Ws = layers_np(net)
    _, C = dims(net)
    pr = ordered_pairs(C)
    y = torch.tensor([p[0] for p in pr])
    t = torch.tensor([p[1] for p in pr])
    K_code = curvature.K(net, y, t)
    mK, MK = curvature.bounds(net, y, t, kind="theorem4")
    bnd = global_bounds(net)
    for i, (a, b) in enumerate(pr):
        K_ref = theorem4_K_np(Ws, Ws[-1][a] - Ws[-1][b], act)
        _close(float(K_code[i]), K_ref, 1e-8, f"K {(a, b)}")
        _close(float(MK[i]), K_ref, 1e-9, f"theorem4 M {(a, b)}")
        _close(float(mK[i]), -K_ref, 1e-9, f"theorem4 m {(a, b)}")
        m, M = bnd[(a, b)]
        assert M <= K_ref * (1 + 1e-12), ((a, b), M, K_ref)
        assert -m <= K_ref * (1 + 1e-12), ((a, b), m, K_ref)


class _KOf(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, y, t):
        return curvature.K(self.model, y, t)


@pytest.mark.parametrize(
    "kind,act,p", [("mlp", "sigmoid", 2), ("mlp", "tanh", 3), ("mlp", "softplus", 4), ("cnn", "tanh", 2)]
)
def test_K_is_differentiable(kind, act, p):
    torch.manual_seed(31 + p)
    if kind == "mlp":
        net = models.mlp(p, 5, act, in_dim=4, n_classes=3).double()
        pname = "fc1.weight"
    else:
        net = models.cnn(channels=2, kernel=3, stride=p, activation=act, in_shape=(1, 5, 5), n_classes=3).double()
        pname = "conv1.weight"
    y = torch.tensor([0, 1, 2, 0])
    t = torch.tensor([1, 2, 0, 2])
    wrapper = _KOf(net)
    W0 = dict(net.named_parameters())[pname].detach().clone().requires_grad_(True)

    def fn(W):
        return functional_call(wrapper, {f"model.{pname}": W}, (y, t))

    torch.testing.assert_close(fn(W0), curvature.K(net, y, t))
    assert torch.autograd.gradcheck(fn, (W0,), eps=1e-6, atol=1e-7, rtol=1e-5)
    # gradients reach every hidden layer and the last layer
    K = curvature.K(net, y, t).sum()
    K.backward()
    for name, prm in net.named_parameters():
        if name.endswith("weight"):
            assert prm.grad is not None and prm.grad.abs().sum() > 0, name


# ------------------------------------------------------------------------------------------------------------
# symmetry and caching
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("spec", ALL_SPECS, ids=spec_id)
def test_bounds_symmetry(spec):
    net = net_for(spec)
    _, C = dims(net)
    for (y, t) in ordered_pairs(C):
        if y > t:
            continue
        m, M = curvature.bounds(net, torch.tensor([y]), torch.tensor([t]))  # fresh cache each call
        m2, M2 = curvature.bounds(net, torch.tensor([t]), torch.tensor([y]))
        _close(float(m), -float(M2), 1e-12, f"m{(y, t)} vs -M{(t, y)}")
        _close(float(M), -float(m2), 1e-12, f"M{(y, t)} vs -m{(t, y)}")


@pytest.mark.parametrize("spec", ALL_SPECS, ids=spec_id)
def test_all_pairs_cache_equals_fresh(spec):
    net = net_for(spec)
    _, C = dims(net)
    cb = curvature.CurvatureBounds(net).all_pairs()
    pr = ordered_pairs(C) + [(0, 1), (1, 0)]
    y = torch.tensor([p[0] for p in pr])
    t = torch.tensor([p[1] for p in pr])
    m_c, M_c = cb.global_(y, t)
    assert m_c.shape == (len(pr),)
    for i, (a, b) in enumerate(pr):
        m, M = curvature.bounds(net, torch.tensor([a]), torch.tensor([b]))
        _close(float(m_c[i]), float(m), 1e-12, f"m {(a, b)}")
        _close(float(M_c[i]), float(M), 1e-12, f"M {(a, b)}")
    # passing the cache to bounds() gives the same numbers
    m_b, M_b = curvature.bounds(net, y, t, cache=cb)
    assert torch.equal(m_b, m_c) and torch.equal(M_b, M_c)


# ------------------------------------------------------------------------------------------------------------
# local bounds
# ------------------------------------------------------------------------------------------------------------

RADII = (0.1, 0.5, 2.0)


def _uniform_ball(gen, n, D, rho):
    d = torch.randn(n, D, generator=gen)
    d = d / d.norm(dim=1, keepdim=True)
    r = rho * torch.rand(n, 1, generator=gen) ** (1.0 / D)
    return d * r


def _sphere(gen, n, D, rho):
    d = torch.randn(n, D, generator=gen)
    return rho * d / d.norm(dim=1, keepdim=True)


@pytest.mark.parametrize("spec", ALL_SPECS, ids=spec_id)
def test_local_bounds_sound_and_within_global(spec):
    net = net_for(spec)
    D, C = dims(net)
    gen = torch.Generator().manual_seed(41)
    n_centres = 2
    X0 = torch.randn(n_centres, D, generator=gen)
    y, t = _random_pairs(gen, C, n_centres)
    m_g, M_g = curvature.bounds(net, y, t)
    loc = {}
    for rho in RADII:
        m_l, M_l = curvature.bounds(net, y, t, kind="local", x=X0, rho=rho)
        assert m_l.shape == (n_centres,) and M_l.shape == (n_centres,)
        assert (m_g <= m_l).all() and (m_l <= 0).all() and (M_l >= 0).all() and (M_l <= M_g).all(), (
            rho, m_g, m_l, M_l, M_g)
        loc[rho] = (m_l, M_l)

    # sample points: uniform in the ball and on the sphere
    balls = [(c, rho) for c in range(n_centres) for rho in RADII]
    pts, owner = [], []
    for b, (c, rho) in enumerate(balls):
        pts += [X0[c] + _uniform_ball(gen, 250, D, rho), X0[c] + _sphere(gen, 100, D, rho)]
        owner += [b] * 350
    P = torch.cat(pts)
    owner = torch.tensor(owner)
    Hall = ref_logit_hessians(net, P)
    cy, ct = y[[balls[b][0] for b in owner.tolist()]], t[[balls[b][0] for b in owner.tolist()]]
    idx = torch.arange(P.shape[0])
    ev = torch.linalg.eigvalsh(Hall[idx, cy] - Hall[idx, ct])

    # adversarial points: projected gradient ascent on λmax(±∇²f) inside each ball
    S_per = 12
    starts, E, centres, radii, signs = [], [], [], [], []
    for (c, rho) in balls:
        for s in range(S_per):
            sign = 1.0 if s % 2 == 0 else -1.0
            starts.append(X0[c] + _uniform_ball(gen, 1, D, rho)[0])
            e = torch.zeros(C)
            e[y[c]], e[t[c]] = sign, -sign
            E.append(e)
            centres.append(X0[c])
            radii.append(rho)
            signs.append(sign)
    Xs, E = torch.stack(starts), torch.stack(E)
    Cc, R = torch.stack(centres), torch.tensor(radii)[:, None]
    signs = torch.tensor(signs)

    def project(X):
        d = X - Cc
        nrm = d.norm(dim=1, keepdim=True)
        return Cc + d * torch.clamp(R / nrm, max=1.0)

    rec, Xfin = adversarial_eigs(net, Xs, E, steps=30, lr=0.1 * R, project=project)
    assert ((Xfin - Cc).norm(dim=1, keepdim=True) <= R * (1 + 1e-12)).all()
    # eigenvalues of ∇²f (f = z_y − z_t): for sign −1 the searched Hessian is −∇²f
    sg = signs[None, :]
    lmin = torch.where(sg > 0, rec[..., 0], -rec[..., 1])
    lmax = torch.where(sg > 0, rec[..., 1], -rec[..., 0])

    problems = []
    for b, (c, rho) in enumerate(balls):
        m_l, M_l = float(loc[rho][0][c]), float(loc[rho][1][c])
        sel = owner == b
        problems += _violations(ev[sel, 0], ev[sel, -1], m_l, M_l, f"sampled ball c={c} rho={rho}")
        cols = slice(b * S_per, (b + 1) * S_per)
        n_pts = int(sel.sum()) + lmin[:, cols].numel()
        assert n_pts >= 500
        problems += _violations(lmin[:, cols], lmax[:, cols], m_l, M_l, f"adversarial ball c={c} rho={rho}")
    assert not problems, problems


@pytest.mark.parametrize("spec", ALL_SPECS, ids=spec_id)
def test_local_bounds_monotone_in_radius(spec):
    net = net_for(spec)
    D, C = dims(net)
    gen = torch.Generator().manual_seed(51)
    X0 = torch.randn(3, D, generator=gen) * torch.tensor([0.5, 1.0, 3.0])[:, None]
    y, t = _random_pairs(gen, C, 3)
    radii = [0.0, 1e-3, 0.05, 0.1, 0.5, 1.0, 2.0, 5.0, 20.0, 1e3]
    res = [curvature.bounds(net, y, t, kind="local", x=X0, rho=r) for r in radii]
    m_g, M_g = curvature.bounds(net, y, t)
    for (m1, M1), (m2, M2), r1, r2 in zip(res[:-1], res[1:], radii[:-1], radii[1:]):
        tol = 1e-12 * torch.maximum(m2.abs(), M2.abs())
        assert (m1 >= m2 - tol).all(), (r1, r2, m1, m2)
        assert (M1 <= M2 + tol).all(), (r1, r2, M1, M2)
    for m, M in res:
        assert (m_g <= m).all() and (M <= M_g).all()
    # the bound at radius 0 covers the Hessian at the centre itself
    Hall = ref_logit_hessians(net, X0)
    idx = torch.arange(3)
    ev = torch.linalg.eigvalsh(Hall[idx, y] - Hall[idx, t])
    m0, M0 = res[0]
    for i in range(3):
        assert not _violations(ev[i, 0], ev[i, -1], float(m0[i]), float(M0[i]), "centre")


def _d2_np(act, z):
    if act == "sigmoid":
        s = 1 / (1 + np.exp(-z))
        return s * (1 - s) * (1 - 2 * s)
    if act == "tanh":
        th = np.tanh(z)
        return -2 * th * (1 - th * th)
    s = 1 / (1 + np.exp(-z))
    return s * (1 - s)


# critical points of σ'' (zeros of σ'''), derived by hand: sigmoid s = (3 ± √3)/6, tanh t = ±1/√3, softplus z = 0
_CRIT2 = {
    "sigmoid": (math.log((3 + _S3) / (3 - _S3)), -math.log((3 + _S3) / (3 - _S3))),
    "tanh": (math.atanh(1 / _S3), -math.atanh(1 / _S3)),
    "softplus": (0.0,),
}


def _d2_interval_np(act, lo, hi):
    """Exact [min, max] of σ'' over each [lo_i, hi_i]: endpoints plus the critical points inside."""
    cands = [lo, hi] + [np.where((lo <= c) & (c <= hi), c, lo) for c in _CRIT2[act]]
    vals = np.stack([_d2_np(act, c) for c in cands])
    return vals.min(0), vals.max(0)


@pytest.mark.parametrize("spec", TWO_LAYER_SPECS, ids=spec_id)
def test_two_layer_local_bound_formula(spec):
    """For L = 2 the local bound is Theorem 3 with per-neuron σ'' ranges over z_i ∈ z_i(x0) ± ρ‖W1_i‖
    (paper.md §1.8's construction, as the module docstring states), intersected with the global bound."""
    net = net_for(spec)
    act = spec[1]
    D, C = dims(net)
    W1, W2 = layers_np(net)
    if spec[0] == "cnn":  # independent bias expansion: one bias per output channel, repeated over the map
        b1 = np.repeat(net.conv1.bias.detach().numpy(), W1.shape[0] // net.channels)
    else:
        b1 = net.fc1.bias.detach().numpy()
    gen = torch.Generator().manual_seed(61)
    X0 = torch.randn(4, D, generator=gen) * 1.5
    y, t = _random_pairs(gen, C, 4)
    m_g, M_g = curvature.bounds(net, y, t)
    rownorm = np.linalg.norm(W1, axis=1)
    for rho in (0.05, 0.3, 1.0, 3.0):
        m_l, M_l = curvature.bounds(net, y, t, kind="local", x=X0, rho=rho)
        for i in range(4):
            z0 = W1 @ X0[i].numpy() + b1
            lo, hi = z0 - rho * rownorm, z0 + rho * rownorm
            dmin, dmax = _d2_interval_np(act, lo, hi)
            w = W2[y[i]] - W2[t[i]]
            cl = np.minimum(w * dmin, w * dmax)
            cu = np.maximum(w * dmin, w * dmax)
            m_ref = min(0.0, float(np.linalg.eigvalsh(W1.T @ (cl[:, None] * W1))[0]))
            M_ref = max(0.0, float(np.linalg.eigvalsh(W1.T @ (cu[:, None] * W1))[-1]))
            m_ref, M_ref = max(m_ref, float(m_g[i])), min(M_ref, float(M_g[i]))
            _close(float(m_l[i]), m_ref, 1e-9, f"local m rho={rho} i={i}")
            _close(float(M_l[i]), M_ref, 1e-9, f"local M rho={rho} i={i}")


def test_local_bounds_need_x_and_rho():
    net = net_for(("mlp", "tanh", 2))
    y, t = torch.tensor([0]), torch.tensor([1])
    with pytest.raises((ValueError, SorobustError)):
        curvature.bounds(net, y, t, kind="local")
    with pytest.raises((ValueError, SorobustError)):
        curvature.bounds(net, y, t, kind="nonsense")


@pytest.mark.parametrize("spec", [("mlp", "tanh", 3), ("cnn", "sigmoid", 2)], ids=spec_id)
def test_bounds_and_hessian_norms_against_autograd(spec):
    """The curvature command's numbers (curvature.bounds_and_hessian_norms): every (point, wrong class) pair in
    order, the Hessian's spectral norm equal to that of autograd's Hessian of the logit difference, and Theorem 4's
    K above it."""
    net = net_for(spec)
    D, C = dims(net)
    gen = torch.Generator().manual_seed(3)
    X = torch.randn(3, D, generator=gen, dtype=torch.float64)
    y = torch.randint(0, C, (3,), generator=gen)
    ys, ts, k_ub, norms = curvature.bounds_and_hessian_norms(net, X, y, chunk=2)
    assert ys.tolist() == [int(v) for v in y for _ in range(C - 1)]
    assert ts.tolist() == [t for v in y for t in range(C) if t != int(v)]
    for j, (a, b) in enumerate(zip(ys.tolist(), ts.tolist())):
        f = lambda x: (net(x[None])[0, a] - net(x[None])[0, b])  # noqa: E731
        Href = torch.autograd.functional.hessian(f, X[j // (C - 1)])
        assert math.isclose(float(norms[j]), float(torch.linalg.matrix_norm(Href, ord=2)), rel_tol=1e-8)
        assert float(k_ub[j]) >= float(norms[j]) * (1 - 1e-12)
