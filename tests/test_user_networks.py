"""A user's own network (issue 12): any smooth feed-forward ``nn.Sequential`` goes through the same code path as the
package's ``mlp``/``cnn`` (``sorobust.models.as_network``), and its numbers are checked against independent
references, in float64:

1. the closed-form Hessian (Lemma 1) equals ``torch.autograd.functional.hessian`` of the user's module;
2. the curvature bounds hold at 500 points each, global (anywhere) and local (inside the balls they claim):
   m ≤ every Ritz value ≤ M, the Ritz values of Rayleigh–Ritz on a 24-dimensional Krylov space built with autograd
   Hessian–vector products of the user's module (each Ritz value lies in [λ_min, λ_max]), and the exact eigenvalues
   of the autograd Hessians of (1);
3. CRC's all-class certificate is sound against the float64 all-class PGD-L2 of ``test_soundness_dtype`` run on the
   user's module (0 violations), and tight where it says it is exact;
4. what cannot be certified is refused with one line naming the layer;
5. the package's own nets give bitwise the same numbers through the adapter, and so does a user Sequential holding
   the same modules.

Networks: 784-256-128-10 softplus (mixed widths; ``nn.Softplus(threshold=math.inf)``, the exact softplus: torch's
default threshold is refused, see ``test_softplus_threshold``) and a 2-convolution tanh net with padding on 14×14
MNIST, Conv2d(1, 4, 3, padding=1) → tanh → Conv2d(4, 8, 3, stride=2, padding=1) → tanh → Flatten → Linear(392, 10),
each trained for 300 Adam steps.
"""

import copy
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from sorobust import activations, attacks, curvature, data, models
from sorobust.certify import crc, crown
from sorobust.errors import SorobustError
from test_soundness_dtype import _pgd_violations


def _user_mlp(act=lambda: nn.Softplus(threshold=math.inf)):
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 256), act(), nn.Linear(256, 128), act(), nn.Linear(128, 10))


def _user_cnn():
    return nn.Sequential(nn.Conv2d(1, 4, 3, stride=1, padding=1), nn.Tanh(), nn.Conv2d(4, 8, 3, stride=2, padding=1),
                         nn.Tanh(), nn.Flatten(), nn.Linear(8 * 7 * 7, 10))


def _train(net, X, y, steps=300, seed=0):
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(net.parameters(), 2e-3)
    for _ in range(steps):
        i = torch.randint(len(X), (64,), generator=gen)
        loss = F.cross_entropy(net(X[i]), y[i])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.eval()


@pytest.fixture(scope="module")
def nets(data_dir, one_thread):
    """The two user networks, briefly trained (float32), as float64 copies, with 200 float64 test points each."""
    X, y = data.load_tensors("mnist", "train", data_dir=data_dir, limit=6000)
    Xt, yt = data.load_tensors("mnist", "test", data_dir=data_dir, limit=200)
    torch.manual_seed(0)
    mlp = _train(_user_mlp(), X, y)
    cnn = _train(_user_cnn(), F.avg_pool2d(X, 2), y)
    return {"mlp": (mlp, mlp.double(), Xt.double(), yt),
            "cnn": (cnn, cnn.double(), F.avg_pool2d(Xt, 2).double(), yt)}


def _net64(nets, name):
    net32, net64, X, y = nets[name]
    return copy.deepcopy(net64), X, y


def _other(y, gen, n=10):
    """A random class ≠ y per point."""
    r = torch.randint(n - 1, y.shape, generator=gen)
    return r + (r >= y).long()


def _margin(module, x, y, t):
    z = module(x)
    return z.gather(1, y[:, None]).squeeze(1) - z.gather(1, t[:, None]).squeeze(1)


# ------------------------------------------------------------------------------------------------------------
# (1) Lemma 1's Hessian against autograd
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_hessian_gradient_and_hvp_equal_autograd(nets, name):
    net, X, y = _net64(nets, name)
    gen = torch.Generator().manual_seed(1)
    x, yy = X[:3], y[:3]
    t = _other(yy, gen)
    H = curvature.hessian(net, x, yy, t)  # the image batch gives the input shape
    assert H.shape == (3, x[0].numel(), x[0].numel())
    for i in range(3):
        def f(v, i=i):
            return _margin(net, v.reshape(1, *x.shape[1:]), yy[i:i + 1], t[i:i + 1])[0]

        Ha = torch.autograd.functional.hessian(f, x[i].flatten(), vectorize=True)
        assert (H[i] - Ha).abs().max() <= 1e-10 * Ha.abs().max(), name
    # gradient and Hessian-vector products of the closed form, at the same points
    xf = x.flatten(1).clone().requires_grad_(True)
    g_auto, = torch.autograd.grad(_margin(net, xf.reshape(x.shape), yy, t).sum(), xf)
    st = curvature.margin_state(net, x, yy, t)
    assert (st.grad - g_auto).abs().max() <= 1e-12 * g_auto.abs().max()
    v = torch.randn(3, xf.shape[1], generator=gen, dtype=torch.float64)
    hv = st.hvp(v)
    want = torch.einsum("bij,bj->bi", H, v)
    assert (hv - want).norm(dim=1).max() <= 1e-10 * want.norm(dim=1).max()


# ------------------------------------------------------------------------------------------------------------
# (2) the bounds hold at 500 points
# ------------------------------------------------------------------------------------------------------------


def _ritz_extremes(module, x, y, t, k=24, seed=0):
    """Smallest and largest Ritz values of ∇²ₓ(z_y − z_t) at each row of x (B, D) on a k-dimensional Krylov space,
    from autograd Hessian-vector products of ``module`` (double backward; independent of sorobust's closed form).

    Rayleigh–Ritz with an orthonormal basis V (Lanczos with full reorthogonalisation, twice): the eigenvalues of
    Vᵀ H V, formed from the stored products H V, lie in [λ_min(H), λ_max(H)] (Cauchy interlacing)."""
    B, D = x.shape
    gen = torch.Generator().manual_seed(seed)
    xg = x.detach().clone().requires_grad_(True)
    f = _margin(module, xg, y, t)
    g, = torch.autograd.grad(f.sum(), xg, create_graph=True)
    V = torch.zeros(B, k, D, dtype=x.dtype)
    HV = torch.zeros(B, k, D, dtype=x.dtype)
    v = torch.randn(B, D, generator=gen, dtype=x.dtype)
    v = v / v.norm(dim=1, keepdim=True)
    for j in range(k):
        V[:, j] = v
        hv, = torch.autograd.grad((g * v).sum(), xg, retain_graph=True)
        HV[:, j] = hv
        w = hv
        for _ in range(2):
            w = w - torch.einsum("bj,bjd->bd", torch.einsum("bjd,bd->bj", V[:, :j + 1], w), V[:, :j + 1])
        v = w / w.norm(dim=1, keepdim=True).clamp(min=1e-300)
    T = V @ HV.transpose(1, 2)
    theta = torch.linalg.eigvalsh((T + T.transpose(1, 2)) / 2)
    return theta[:, 0], theta[:, -1]


def _global_points(X, gen):
    """500 points anywhere: test images, images plus noise, uniform boxes, wide Gaussians, far-out images (where the
    activations saturate)."""
    n, D = 100, X[0].numel()
    Xf = X.flatten(1)[:n]
    pts = [Xf, Xf + 0.3 * torch.randn(n, D, generator=gen, dtype=X.dtype),
           torch.rand(n, D, generator=gen, dtype=X.dtype), 3 * torch.randn(n, D, generator=gen, dtype=X.dtype),
           5 * Xf - 2]
    return torch.cat(pts)


def _check_bounds(net, shape, pts, y, t, m, M):
    lo, hi = _ritz_extremes(lambda v: net(v.reshape(-1, *shape)), pts, y, t)
    slack = 1e-9 * torch.maximum(m.abs(), M.abs())
    assert bool((m <= lo + slack).all()), float((lo - m).min())
    assert bool((hi <= M + slack).all()), float((M - hi).min())
    assert bool((m <= 0).all() and (M >= 0).all())
    return lo, hi


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_global_bounds_hold_at_500_points(nets, name):
    net, X, y = _net64(nets, name)
    gen = torch.Generator().manual_seed(2)
    pts = _global_points(X, gen)
    B = pts.shape[0]
    assert B == 500
    yy = torch.randint(10, (B,), generator=gen)
    t = _other(yy, gen)
    cb = curvature.CurvatureBounds(models.as_network(net, in_shape=tuple(X.shape[1:])))
    m, M = curvature.bounds(None, yy, t, cache=cb)
    lo, hi = _check_bounds(net, X.shape[1:], pts, yy, t, m, M)
    assert float(hi.max()) > 0 and float(lo.min()) < 0  # the check has something to bite on
    # and the exact spectrum at a few points (autograd Hessians)
    for i in range(2):
        def f(v, i=i):
            return _margin(net, v.reshape(1, *X.shape[1:]), yy[i:i + 1], t[i:i + 1])[0]

        lam = torch.linalg.eigvalsh(torch.autograd.functional.hessian(f, pts[i], vectorize=True))
        assert m[i] <= lam[0] and lam[-1] <= M[i]


@pytest.mark.parametrize("name,rho", [("mlp", 0.5), ("cnn", 0.5)])
def test_local_bounds_hold_inside_their_balls(nets, name, rho):
    """50 centres × 10 points inside each ball (radii uniform in [0, ρ], two on the sphere): the local bounds of
    the centre hold at each, and they are within the global ones."""
    net, X, y = _net64(nets, name)
    gen = torch.Generator().manual_seed(3)
    C, per = 50, 10
    x0 = X[:C].flatten(1)
    yy = y[:C]
    t = _other(yy, gen)
    ml, Ml = curvature.bounds(net, yy, t, kind="local", x=X[:C], rho=rho)
    mg, Mg = curvature.bounds(models.as_network(net, in_shape=tuple(X.shape[1:])), yy, t)
    assert bool((ml >= mg).all() and (Ml <= Mg).all())
    u = torch.randn(C, per, x0.shape[1], generator=gen, dtype=x0.dtype)
    u = u / u.norm(dim=2, keepdim=True)
    r = rho * torch.rand(C, per, 1, generator=gen, dtype=x0.dtype)
    r[:, :2] = rho * (1 - 1e-12)
    pts = (x0[:, None] + r * u).reshape(C * per, -1)
    rep = lambda v: v.repeat_interleave(per)  # noqa: E731
    _check_bounds(net, X.shape[1:], pts, rep(yy), rep(t), rep(ml), rep(Ml))


# ------------------------------------------------------------------------------------------------------------
# (3) CRC is sound against a float64 all-class PGD on the user's module
# ------------------------------------------------------------------------------------------------------------


def _crc_soundness(nets, name, dtype, n, steps, restarts):
    net32, net64, X, y = nets[name]
    model = copy.deepcopy(net64).to(dtype)
    x = X[:n].to(dtype)
    res = crc(model, x, y[:n], targets="all")
    cert = res.certificate.to(torch.float64)
    correct = model(x).argmax(1) == y[:n]
    assert correct.float().mean() > 0.8 and (cert > 0).sum() > 0.7 * n  # the check has something to bite on
    assert bool(res.converged[correct].all())
    radius = torch.where(correct, cert * (1 - 1e-6), torch.zeros_like(cert))
    shape = X.shape[1:]
    attack = lambda v: net64(v.reshape(-1, *shape))  # noqa: E731 - the user's module itself, float64
    bad = _pgd_violations(attack, X[:n].flatten(1), y[:n], radius, steps=steps, restarts=restarts)
    assert bad.numel() == 0, f"{bad.numel()} {dtype} certificates broken: points {bad.tolist()}"
    # where CRC says primal = dual, x* is a point of the decision boundary at the certified distance (checked with
    # the user's module): the certificate is the exact distance, not a vacuous bound
    ex = res.exact & correct
    assert int(ex.sum()) > 0
    xs = res.x_star[ex].to(torch.float64)
    dist = (xs - X[:n].flatten(1)[ex]).norm(dim=1)
    assert torch.allclose(dist, cert[ex], rtol=1e-4 if dtype == torch.float32 else 1e-7)
    with torch.no_grad():
        f = _margin(attack, xs, y[:n][ex], res.target[ex])
    assert float(f.abs().max()) <= (1e-4 if dtype == torch.float32 else 1e-8)


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_crc_sound_against_pgd(nets, name):
    _crc_soundness(nets, name, torch.float64, n=40, steps=80, restarts=2)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_crc_sound_against_pgd_full_budget(nets, name, dtype):
    """The budget of ``test_soundness_dtype`` (200 points, 200 steps, 5 restarts), and the float32 solver, whose
    certificate is re-evaluated in float64 on a float64 copy of the user's Sequential (``crc._model64``)."""
    _crc_soundness(nets, name, dtype, n=200, steps=200, restarts=5)


# ------------------------------------------------------------------------------------------------------------
# (4) what is refused, with one line naming the layer
# ------------------------------------------------------------------------------------------------------------


class _Residual(nn.Module):
    def __init__(self, n):
        super().__init__()
        self.fc = nn.Linear(n, n)

    def forward(self, x):
        return x + torch.tanh(self.fc(x))


class _Chain(nn.Module):
    """Not a Sequential, but its forward is a plain chain (read by torch.fx)."""

    def __init__(self, seq):
        super().__init__()
        self.c1, self.c2, self.fc = seq[0], seq[2], seq[5]

    def forward(self, x):
        x = torch.tanh(self.c1(x))
        x = torch.tanh(self.c2(x))
        return self.fc(x.view(x.size(0), -1))


def _flat(*mods):
    return nn.Sequential(nn.Flatten(), *mods)


_X784 = torch.rand(2, 1, 28, 28, dtype=torch.float64)
_Y = torch.tensor([0, 1])

_REFUSED = [  # (id, network, what is called, words of the one line)
    ("relu-crc", lambda: _flat(nn.Linear(784, 8), nn.ReLU(), nn.Linear(8, 10)), "crc",
     ["layer 2 (ReLU)", "not twice differentiable", "CROWN family"]),
    ("relu-bounds", lambda: _flat(nn.Linear(784, 8), nn.ReLU(), nn.Linear(8, 10)), "bounds",
     ["layer 2 (ReLU)", "not twice differentiable"]),
    ("relu-hessian", lambda: _flat(nn.Linear(784, 8), nn.ReLU(), nn.Linear(8, 10)), "hessian", ["layer 2 (ReLU)"]),
    ("relu-K", lambda: _flat(nn.Linear(784, 8), nn.ReLU(), nn.Linear(8, 10)), "K", ["layer 2 (ReLU)"]),
    ("relu-attack", lambda: _flat(nn.Linear(784, 8), nn.ReLU(), nn.Linear(8, 10)), "attack", ["layer 2 (ReLU)"]),
    ("batchnorm", lambda: _flat(nn.Linear(784, 8), nn.BatchNorm1d(8), nn.Tanh(), nn.Linear(8, 10)).eval(), "crc",
     ["layer 2 (BatchNorm1d)", "fold it into the preceding"]),
    ("maxpool", lambda: nn.Sequential(nn.Conv2d(1, 2, 3), nn.MaxPool2d(2), nn.Tanh(), nn.Flatten(),
                                      nn.Linear(338, 10)), "crc", ["layer 1 (MaxPool2d)", "pooling"]),
    ("residual", lambda: _flat(nn.Linear(784, 8), nn.Tanh(), _Residual(8), nn.Linear(8, 10)), "crc",
     ["layer 3.add", "module 3 (_Residual)", "residual connection"]),
    ("residual-top", lambda: _Residual(784), "bounds", ["layer add", "residual connection"]),
    ("softplus-threshold", lambda: _flat(nn.Linear(784, 8), nn.Softplus(), nn.Linear(8, 10)), "crc",
     ["layer 2 (Softplus(beta=1, threshold=20))", "2.1e-09", "threshold=math.inf", "softplus_threshold='ignore'"]),
    ("softplus-threshold-crown", lambda: _flat(nn.Linear(784, 8), nn.Softplus(beta=2), nn.Linear(8, 10)), "crown",
     ["layer 2 (Softplus(beta=2, threshold=20))"]),
    ("mixed-activations", lambda: _flat(nn.Linear(784, 8), nn.Tanh(), nn.Linear(8, 8), nn.Sigmoid(),
                                        nn.Linear(8, 10)), "crc", ["layer 4 (Sigmoid) differs", "layer 2 (Tanh)"]),
    ("mixed-beta", lambda: _flat(nn.Linear(784, 8), nn.Softplus(1, math.inf), nn.Linear(8, 8),
                                 nn.Softplus(2, math.inf), nn.Linear(8, 10)), "crown", ["layer 4 (Softplus(beta=2"]),
    ("dropout-train", lambda: _flat(nn.Linear(784, 8), nn.Dropout(0.5), nn.Tanh(), nn.Linear(8, 10)).train(), "crc",
     ["layer 2 (Dropout)", "train mode", "eval()"]),
    ("gelu", lambda: _flat(nn.Linear(784, 8), nn.GELU(), nn.Linear(8, 10)), "crown", ["layer 2 (GELU)"]),
    ("softmax", lambda: _flat(nn.Linear(784, 8), nn.Tanh(), nn.Linear(8, 10), nn.Softmax(1)), "crc",
     ["layer 4 (Softmax)", "logits"]),
    ("final-activation", lambda: _flat(nn.Linear(784, 8), nn.Tanh(), nn.Linear(8, 10), nn.Tanh()), "crc",
     ["layer 4 (Tanh) follows the last affine layer"]),
    ("linear-on-image", lambda: nn.Sequential(nn.Conv2d(1, 2, 3), nn.Tanh(), nn.Linear(26, 10)), "crc",
     ["layer 2 (Linear) receives a (2, 26, 26) tensor", "nn.Flatten()"]),
    ("wrong-width", lambda: _flat(nn.Linear(784, 8), nn.Tanh(), nn.Linear(9, 10)), "crc",
     ["layer 3 (Linear) takes 9 inputs but receives 8"]),
    ("two-affine", lambda: _flat(nn.Linear(784, 8), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 10)), "crc",
     ["layer 2 (Linear) follows layer 1 (Linear) with no activation"]),
    ("reflect-padding", lambda: nn.Sequential(nn.Conv2d(1, 2, 3, padding=1, padding_mode="reflect"), nn.Tanh(),
                                              nn.Flatten(), nn.Linear(2 * 784, 10)), "crc",
     ["layer 0 (Conv2d)", "padding_mode 'reflect'"]),
    ("no-hidden-layer", lambda: _flat(nn.Linear(784, 10)), "crown", ["single affine layer"]),
]


def _call(what, net):
    y, t = _Y, torch.tensor([1, 0])
    if what == "crc":
        return crc(net, _X784, _Y)
    if what == "bounds":
        return curvature.bounds(net, y, t)
    if what == "hessian":
        return curvature.hessian(net, _X784, y, t)
    if what == "K":
        return curvature.K(net, y, t)
    if what == "attack":
        return attacks.second_order(net, _X784, _Y, 0.5)
    return crown.certified_radius(net, _X784, _Y, method="crown")


@pytest.mark.parametrize("case,build,what,words", _REFUSED, ids=[r[0] for r in _REFUSED])
def test_refusals_name_the_layer_in_one_line(case, build, what, words):
    torch.manual_seed(0)
    net = build().double()
    with pytest.raises(SorobustError) as ei:
        _call(what, net)
    msg = str(ei.value)
    assert "\n" not in msg, msg
    for w in words:
        assert w in msg, msg


def test_relu_network_accepted_by_the_crown_family():
    """ReLU is refused by the curvature code only: a user's relu Sequential gets the CROWN-family radii of the
    package's relu MLP with the same weights, bitwise."""
    torch.manual_seed(0)
    own = models.mlp(3, 16, "relu", in_dim=784, n_classes=10).double()
    seq = nn.Sequential(nn.Flatten(), own.fc1, nn.ReLU(), own.fc2, nn.ReLU(), own.fc3)
    X = torch.rand(6, 1, 28, 28, dtype=torch.float64)
    y = own(X).argmax(1)
    for method in ("crown", "ibp", "crown-ibp"):
        a = crown.certified_radius(own, X, y, method=method)["radius"]
        b = crown.certified_radius(seq, X, y, method=method)["radius"]
        assert torch.equal(a, b) and bool((a > 0).all()), method


def test_softplus_threshold():
    """torch's default Softplus (threshold 20) is refused (one line, above); threshold=math.inf is the exact softplus
    and is accepted; ``softplus_threshold='ignore'`` certifies the smooth softplus in place of the thresholded one,
    and the network then computes that smooth function (differing from the module by ≤ log(1+e^-20) per unit)."""
    torch.manual_seed(0)
    seq = _flat(nn.Linear(784, 8), nn.Softplus(), nn.Linear(8, 10)).double()
    net = models.as_network(seq, softplus_threshold="ignore")
    x = 40 * torch.rand(4, 784, dtype=torch.float64)  # pre-activations past the threshold
    assert (net(x) - seq(x)).abs().max() <= 1e-8 * (1 + seq[1].weight.abs().sum())
    exact = _flat(seq[1], nn.Softplus(threshold=math.inf), seq[3])
    assert torch.equal(models.as_network(exact)(x), net(x))
    assert crc(net, x, net(x).argmax(1)).certificate.shape == (4,)
    with pytest.raises(SorobustError, match="softplus_threshold"):
        models.as_network(seq, softplus_threshold="sometimes")


def test_conv_input_shape_from_inputs_or_given():
    """A net that starts with a convolution takes its input shape from the inputs (crc, hessian, the attacks, CROWN)
    or from ``as_network(..., in_shape=...)``; without either, MNIST's 28×28 is assumed and a mismatch says so."""
    torch.manual_seed(0)
    seq = _user_cnn().double()
    y, t = torch.tensor([0]), torch.tensor([1])
    with pytest.raises(SorobustError, match=r"layer 5 \(Linear\) takes 392 inputs but receives 1568 .*in_shape="):
        curvature.bounds(seq, y, t)
    net = models.as_network(seq, in_shape=(1, 14, 14))
    assert net.in_shape == (1, 14, 14) and net.in_dim == 196 and net.depth == 3 and net.n_classes == 10
    m, M = curvature.bounds(net, y, t)
    x = torch.rand(1, 1, 14, 14, dtype=torch.float64)
    ml, Ml = curvature.bounds(seq, y, t, kind="local", x=x, rho=0.1)
    assert ml >= m and Ml <= M
    with pytest.raises(SorobustError, match=r"layer 5 \(Linear\) takes 392 inputs but receives 1568$"):
        models.as_network(seq, in_shape=(1, 28, 28))
    with pytest.raises(SorobustError, match=r"inputs of shape \(1, 28, 28\) hold 784 values, but the network takes"):
        crc(net, torch.rand(1, 1, 28, 28, dtype=torch.float64), y)


# ------------------------------------------------------------------------------------------------------------
# (5) one path: the package's own nets and user Sequentials of the same modules give bitwise the same numbers
# ------------------------------------------------------------------------------------------------------------


def _same_modules_as_sequential(model):
    """A user nn.Sequential holding the package model's own Linear/Conv2d modules and torch's activation module."""
    act = {"softplus": lambda: nn.Softplus(threshold=math.inf), "tanh": nn.Tanh, "sigmoid": nn.Sigmoid}[
        model.activation.name]
    if isinstance(model, models.ConvNet):
        return nn.Sequential(model.conv1, act(), nn.Flatten(), model.fc2)
    mods = [nn.Flatten()]
    for i, layer in enumerate(model.layers()):
        mods += [act(), layer] if i else [layer]
    return nn.Sequential(*mods)


def _numbers(model, X, y, t):
    """Every number the numerical code derives from a network, for a bitwise comparison. The functions without
    inputs get the network read with the inputs' shape (a Sequential that starts with a Conv2d needs it)."""
    plain = models.as_network(model, models.input_shape_of(X))
    out = {"logits": plain(X), "hessian": curvature.hessian(model, X[:2], y[:2], t[:2]),
           "global": curvature.bounds(plain, y, t), "K": curvature.K(plain, y, t)}
    out["local"] = curvature.bounds(model, y, t, kind="local", x=X, rho=0.3)
    out["estimate"] = curvature.CurvatureBounds(plain, estimate=True).global_(y, t)
    for solver in ("kkt", "mm"):
        r = crc(model, X, y, targets="all", solver=solver)
        out[f"crc-{solver}"] = (r.certificate, r.certificate_reference, r.eta, r.x_star, r.iterations)
    r = crc(model, X, y, targets="runner-up", curvature="local")
    out["crc-local"] = (r.certificate, r.eta)
    a = attacks.second_order(model, X, y, 0.5)
    out["attack"] = (a.x_adv, a.dual_bound)
    a = attacks.second_order(model, X, y, 0.5, solver="kkt")
    out["attack-kkt"] = (a.x_adv, a.dual_bound)
    for method in ("crown", "ibp", "crown-ibp"):
        out[method] = crown.certified_radius(model, X, y, method=method)["radius"]
    out["margin-bounds"] = crown.margin_bounds(model, X, y, 0.1, method="crown")
    return out


def _assert_bitwise(a, b, where):
    if isinstance(a, (tuple, list)):
        for u, v in zip(a, b):
            _assert_bitwise(u, v, where)
        return
    assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b), where


_OWN = [("mlp-softplus", lambda: models.mlp(3, 24, "softplus", in_dim=100), torch.float64),
        ("mlp-tanh-f32", lambda: models.mlp(2, 20, "tanh", in_dim=100), torch.float32),
        ("cnn-sigmoid", lambda: models.cnn(3, 3, 2, "sigmoid", in_shape=(1, 10, 10)), torch.float64),
        ("cnn-tanh-f32", lambda: models.cnn(2, 3, 1, "tanh", in_shape=(1, 10, 10)), torch.float32)]


@pytest.mark.parametrize("case,build,dtype", _OWN, ids=[c[0] for c in _OWN])
def test_own_nets_are_instances_of_the_same_path(one_thread, case, build, dtype):
    torch.manual_seed(0)
    model = build().to(dtype)
    X = torch.rand(4, 1, 10, 10, dtype=dtype)
    y = model(X).argmax(1)
    t = (y + 1) % 10
    # the ops the curvature code reads are the adapter's, and equal to the layers' own AffineOps
    direct = ([models.AffineOp(model.conv1, model.in_shape), models.AffineOp(model.fc2)]
              if isinstance(model, models.ConvNet) else [models.AffineOp(m) for m in model.layers()])
    v = torch.rand(3, 1000, dtype=dtype)
    for op, ref in zip(model.ops(), direct, strict=True):
        assert op.module is ref.module and torch.equal(op.apply(v[:, :op.in_dim]), ref.apply(v[:, :op.in_dim]))
    net = models.as_network(model)
    assert models.as_network(net) is net and net.activation is model.activation
    assert torch.equal(net(X), model(X))  # the package model's own forward, untouched
    ref = _numbers(model, X, y, t)
    for other in (net, _same_modules_as_sequential(model)):
        got = _numbers(other, X, y, t)
        for key in ref:
            _assert_bitwise(ref[key], got[key], f"{case}: {key} through {type(other).__name__}")


def test_empirical_attacks_run_the_users_module(nets):
    """PGD needs no layer structure: it attacks the user's module itself, on inputs shaped like x (images for a
    net that starts with a convolution), and its verdict is the module's."""
    seq, X, y = _net64(nets, "cnn")
    res = attacks.pgd_l2(seq, X[:8], y[:8], 0.5, targets="all", clamp=None, generator=torch.Generator().manual_seed(0))
    assert res.x_adv.shape == (8, 196) and bool((res.distance <= 0.5 + 1e-12).all())
    with torch.no_grad():
        assert torch.equal(res.pred, seq(res.x_adv.reshape(8, 1, 14, 14)).argmax(1))


def test_module_with_the_same_layer_sequence(nets):
    """A module that is not an nn.Sequential but whose forward is the same chain (read by torch.fx and checked
    against its output) gives the Sequential's numbers bitwise."""
    seq, X, y = _net64(nets, "cnn")
    chain = _Chain(seq)
    a = crc(seq, X[:3], y[:3])
    b = crc(chain, X[:3], y[:3])
    assert torch.equal(a.certificate, b.certificate) and bool((a.certificate > 0).any())
    assert torch.equal(curvature.hessian(seq, X[:1], y[:1], (y[:1] + 1) % 10),
                       curvature.hessian(chain, X[:1], y[:1], (y[:1] + 1) % 10))


# ------------------------------------------------------------------------------------------------------------
# building blocks: convolutions with padding, softplus with beta
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kw,in_shape", [
    ({"stride": 1, "padding": 1}, (2, 7, 7)), ({"stride": 2, "padding": 1}, (2, 8, 7)),
    ({"stride": 3, "padding": 2}, (2, 9, 10)), ({"stride": 1, "padding": "same"}, (2, 6, 6)),
    ({"stride": 2, "padding": (0, 2), "dilation": 2}, (2, 9, 9)), ({"stride": 1, "padding": 1, "groups": 2}, (2, 5, 5)),
    ({"stride": 2, "padding": 1, "bias": False}, (2, 6, 6))])
def test_conv_affine_op_padding_stride_dilation_groups(kw, in_shape):
    """AffineOp of a Conv2d: apply = the module's convolution without bias, dense = its Jacobian (autograd), adjoint
    = denseᵀ, bias = the module's output at 0."""
    torch.manual_seed(0)
    conv = nn.Conv2d(in_shape[0], 4, 3, **kw).double()
    op = models.AffineOp(conv, in_shape)
    x = torch.randn(3, *in_shape, dtype=torch.float64)
    out = conv(x)
    assert op.out_shape == tuple(out.shape[1:])
    zero = conv(torch.zeros(1, *in_shape, dtype=torch.float64)).flatten()
    assert torch.allclose(op.bias, zero, atol=1e-15)
    assert torch.allclose(op.apply(x.flatten(1)) + op.bias, out.flatten(1), atol=1e-13)
    J = torch.autograd.functional.jacobian(lambda v: conv(v.reshape(1, *in_shape)).flatten(), x[0].flatten())
    assert torch.allclose(op.dense(), J, atol=1e-13)
    w = torch.randn(2, op.out_dim, dtype=torch.float64)
    assert torch.allclose(op.adjoint(w), w @ J, atol=1e-13)


def test_asymmetric_same_padding_refused():
    seq = nn.Sequential(nn.Conv2d(1, 2, 4, padding="same"), nn.Tanh(), nn.Flatten(), nn.Linear(2 * 784, 10))
    with pytest.raises(SorobustError, match=r"layer 0 \(Conv2d\): padding 'same' is asymmetric"):
        models.as_network(seq)


@pytest.mark.parametrize("beta", [0.5, 2.0, 7.0])
def test_softplus_beta_constants(beta):
    """softplus_β = softplus(βz)/β: σ' ∈ (0, 1], σ'' ∈ (0, β/4] (its maximum at 0), against torch's Softplus and
    autograd on a fine grid."""
    act = activations.softplus(beta)
    assert (act.g, act.h_lo, act.h_hi) == (1.0, 0.0, beta / 4) and act.label == f"softplus(beta={beta:g})"
    z = torch.linspace(-30 / beta, 30 / beta, 20001, dtype=torch.float64, requires_grad=True)
    ref = F.softplus(z, beta, threshold=math.inf)
    assert torch.allclose(act.fn(z), ref, rtol=1e-14, atol=1e-300)
    d1, = torch.autograd.grad(ref.sum(), z, create_graph=True)
    d2, = torch.autograd.grad(d1.sum(), z)
    assert torch.allclose(act.d1(z), d1, rtol=1e-12, atol=1e-15)
    assert torch.allclose(act.d2(z), d2, rtol=1e-9, atol=1e-12 * act.h_hi)
    assert float(d2.max()) <= act.h_hi and abs(float(d2.max()) - act.h_hi) <= 1e-6 * act.h_hi
    lo, hi = torch.tensor([-1.0, 0.5, -3.0], dtype=torch.float64), torch.tensor([1.0, 2.0, -2.0], dtype=torch.float64)
    r2 = act.d2_range(lo, hi)
    for i in range(3):
        zz = torch.linspace(float(lo[i]), float(hi[i]), 2001, dtype=torch.float64)
        assert r2[0][i] <= act.d2(zz).min() and act.d2(zz).max() <= r2[1][i]
    assert activations.softplus(1.0) is activations.get("softplus")


def test_softplus_beta_network_hessian_and_bounds():
    """A beta = 3 softplus net (mixed widths): Lemma 1's Hessian equals autograd's of torch's Softplus module, and
    the global bounds hold at 200 random points (exact eigenvalues)."""
    torch.manual_seed(0)
    sp = lambda: nn.Softplus(beta=3.0, threshold=math.inf)  # noqa: E731
    seq = nn.Sequential(nn.Linear(12, 9), sp(), nn.Linear(9, 7), sp(), nn.Linear(7, 5)).double()
    gen = torch.Generator().manual_seed(0)
    x = 2 * torch.randn(200, 12, generator=gen, dtype=torch.float64)
    y = torch.randint(5, (200,), generator=gen)
    t = _other(y, gen, 5)
    H = curvature.hessian(seq, x, y, t)
    Ha = torch.stack([torch.autograd.functional.hessian(lambda v, i=i: _margin(seq, v[None], y[i:i + 1],
                                                                               t[i:i + 1])[0], x[i])
                      for i in range(200)])
    assert (H - Ha).abs().max() <= 1e-12 * Ha.abs().max()
    m, M = curvature.bounds(seq, y, t)
    lam = torch.linalg.eigvalsh(Ha)
    assert bool((m <= lam[:, 0]).all() and (lam[:, -1] <= M).all())
    # β scales σ'' (and so the bounds): the β = 3 net's M is above the same weights' β = 1 bound
    one = nn.Sequential(seq[0], nn.Softplus(threshold=math.inf), seq[2], nn.Softplus(threshold=math.inf), seq[4])
    assert bool((curvature.bounds(one, y, t)[1] < M).all())


# ------------------------------------------------------------------------------------------------------------
# models.load with a user module
# ------------------------------------------------------------------------------------------------------------


def _small():
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 32), nn.Tanh(), nn.Linear(32, 16), nn.Tanh(), nn.Linear(16, 10))


def test_load_state_dict_into_user_module(tmp_path):
    torch.manual_seed(0)
    src = _small()
    path = tmp_path / "sd.pt"
    torch.save(src.state_dict(), path)
    dst = models.load(path, module=_small())
    assert not dst.training
    for a, b in zip(src.state_dict().values(), dst.state_dict().values()):
        assert torch.equal(a, b)
    # a sorobust checkpoint's weights go into a Sequential of the same layers by position
    own = models.mlp(2, 32, "tanh")
    ck = models.save(own, tmp_path / "own.pt")
    seq = nn.Sequential(nn.Flatten(), nn.Linear(784, 32), nn.Tanh(), nn.Linear(32, 10))
    with pytest.raises(SorobustError) as ei:
        models.load(ck, module=seq)
    msg = str(ei.value)
    assert "\n" not in msg and "missing 1.weight, 1.bias, 3.weight and 1 more" in msg and "by_position=True" in msg
    seq = models.load(ck, module=seq, by_position=True)
    X = torch.rand(3, 1, 28, 28)
    assert torch.equal(crc(seq, X, own(X).argmax(1)).certificate, crc(own, X, own(X).argmax(1)).certificate)


_LOAD_CASES = [  # (id, state dict written, words of the one line)
    ("wrong-shape", lambda sd: {**sd, "3.weight": torch.zeros(16, 31)},
     ["wrong shape 3.weight (16, 31) (module: (16, 32))", "other sizes"]),
    ("missing-and-unexpected", lambda sd: {**{k: v for k, v in sd.items() if k != "5.bias"}, "extra": torch.zeros(1)},
     ["missing 5.bias", "unexpected 'extra'", "another network"]),
    ("dataparallel-prefix", lambda sd: {f"module.{k}": v for k, v in sd.items()},
     ["missing 1.weight", "unexpected 'module.1.weight'", "prefix 'module.'", "strip it"]),
    ("renamed", lambda sd: {f"fc{i}.{k.split('.')[1]}": v for i, (k, v) in enumerate(sd.items())},
     ["only the names differ", "by_position=True"]),
    ("nan", lambda sd: {**sd, "1.bias": torch.full((32,), float("nan"))}, ["'1.bias' holds NaN"]),
    ("not-tensors", lambda sd: {"a": 1}, ["holds no state dict"]),
]


@pytest.mark.parametrize("case,write,words", _LOAD_CASES, ids=[c[0] for c in _LOAD_CASES])
def test_load_into_user_module_explains_mismatches(tmp_path, case, write, words):
    torch.manual_seed(0)
    path = tmp_path / "sd.pt"
    torch.save(write(_small().state_dict()), path)
    dst = _small()
    before = {k: v.clone() for k, v in dst.state_dict().items()}
    with pytest.raises(SorobustError) as ei:
        models.load(path, module=dst)
    msg = str(ei.value)
    assert "\n" not in msg, msg
    for w in words:
        assert w in msg, msg
    assert all(torch.equal(before[k], v) for k, v in dst.state_dict().items())  # untouched


def test_plain_state_dict_with_other_names_points_to_module(tmp_path):
    path = tmp_path / "seq.pt"
    torch.save(_small().state_dict(), path)
    with pytest.raises(SorobustError, match=r"models.load\(path, module="):
        models.load(path)
    with pytest.raises(SorobustError, match=r"names are none of sorobust's .*module=that_module"):
        models.load(path, arch="mlp-2x32-tanh")
    with pytest.raises(SorobustError, match="no sorobust architecture"):
        models.save(_small(), tmp_path / "x.pt")
