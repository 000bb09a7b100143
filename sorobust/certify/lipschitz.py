"""Global Lipschitz certificate: the first-order counterpart of CRC.

For logits z(x) and a point x of label y, every wrong class t has the margin f_t = z_y − z_t. If L_{y,t} bounds the
ℓ2 Lipschitz constant of x ↦ f_t(x), then f_t(x + δ) ≥ f_t(x) − L_{y,t}‖δ‖₂ > 0 for ‖δ‖₂ < f_t(x) / L_{y,t}, so

    r(x) = min_{t ≠ y} (z_y(x) − z_t(x)) / L_{y,t}

is a certified ℓ2 radius (Hein & Andriushchenko 2017, "Formal guarantees on the robustness of a classifier against
adversarial manipulation", NeurIPS, Theorem 2.1 with the local constant replaced by a global one; Tsuzuku, Sato &
Sugiyama 2018, "Lipschitz-Margin Training: Scalable Certification of Perturbation Invariance for Deep Neural
Networks", NeurIPS, Proposition 1, which uses √2·Lip(z) for every pair: our per-pair constant is never larger,
since ‖W_L[y] − W_L[t]‖₂ ≤ √2‖W_L‖₂). The margin-over-gradient-norm form is also the first-order estimate behind
CLEVER (Weng et al. 2018, ICLR). Singla & Feizi 2020 ("Second-Order Provable Defenses against Adversarial Attacks",
ICML) compare CRC against such first-order, global-Lipschitz certificates.

**The constant** (:func:`pair_constants`). For z = W_L σ(W_{L−1} … σ(W_1 x + b_1) …) + b_L the chain rule gives
∇f_t = W_1ᵀ D_1 ⋯ W_{L−1}ᵀ D_{L−1} (W_L[y] − W_L[t])ᵀ with D_k = diag(σ'(z^(k))), |σ'| ≤ g, so

    L_{y,t} = ‖W_L[y] − W_L[t]‖₂ · Π_{k<L} ‖W_k‖₂ · Π_{k<L} Lip(σ_k)

(Szegedy et al. 2014, "Intriguing properties of neural networks", §4.3: the product of the layers' operator
norms), with Lip(σ) = g: 1/4 for sigmoid, 1 for tanh, softplus (any β) and relu. A convolution is the linear map
of its unrolled (Toeplitz) matrix (:meth:`sorobust.models.AffineOp.dense`, paper.md §1.3), whose operator norm is
exactly its spectral norm. The norms are :func:`sorobust.curvature._spectral_norm_upper`: singular values in
float64 widened by 8·n·ε·‖W‖_F, a rigorous bound on the SVD's backward error, so float error cannot make them too
small; the product is widened by a further (1 + 8(n + L + 8)ε). For a network with no hidden layer (one Linear)
L_{y,t} = ‖W[y] − W[t]‖₂ is exact and the radius is the exact distance to the decision boundary. The [C, C] table
is computed once per model (its weights, in their current values) and cached.

**Networks.** Every network is read through :func:`sorobust.models.as_network` (the package's MLP and conv net, a
user's ``nn.Sequential`` of Linear / Conv2d / Flatten with one activation, ReLU included). What it refuses but a
Lipschitz bound still covers is read here from a plain (nested) ``nn.Sequential``: a single affine layer (a linear
classifier), a different activation per layer, and the 1-Lipschitz sorting activations of deel-torchlip
(``GroupSort``, ``GroupSort2``, ``FullSort``: Lip = their ``k_coef_lip``; Anil, Lucas & Grosse 2019, "Sorting out
Lipschitz function approximation", ICML). Modules with parametrised weights (torchlip's ``SpectralLinear``: spectral
normalisation and Björck orthonormalisation) must be in eval mode, where their weights are fixed; their weights are
read once (:func:`torch.nn.utils.parametrize.cached`).

**Rounding** (so that the float32 and float64 radii are both true lower bounds). Weights are copied into float64
(exactly), and the logits are evaluated in float64 together with a rigorous bound on that evaluation's rounding
error: each affine layer adds γ_{n+1}(|W||â| + |b|) (n its fan-in; every layer, the convolutions too, is a matrix
product here) and propagates the incoming error through |W|; σ propagates it times Lip(σ) (elementwise; a sort is
non-expansive in ℓ∞, so its error is the group's largest) and adds its own evaluation error, taken as 64 ulps of
|σ(ẑ)| (torch's float64 sigmoid, tanh, exp/log1p are accurate to a few ulps; relu and sorting are exact). The margin
used is f̂ − 2·(err_y + err_t + ε|f̂|), rounded toward −∞, divided by the upward-rounded L_{y,t} and rounded toward
−∞ again; the radius is then cast to the model's dtype rounding down (:func:`sorobust.certify.crc._round_down`).
A float32 model thus gets the float64 radius rounded down: never larger.
"""

from __future__ import annotations

import math
import time
import weakref
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from .. import activations, models
from ..curvature import _spectral_norm_upper
from ..errors import SorobustError
from .crc import _round_down
from .crown import _targets

_EPS = torch.finfo(torch.float64).eps
#: evaluation error of a non-exact activation in float64, in units of eps·|σ(ẑ)| (a few ulps in practice)
_ACT_ULPS = 64.0
#: the sorting activations of deel-torchlip (1-Lipschitz in ℓ2 times their k_coef_lip; exact to evaluate)
_SORT_ACTIVATIONS = ("GroupSort", "GroupSort2", "FullSort")

__all__ = ["pair_constants", "certified_radius", "LipschitzNet"]


@dataclass
class _Affine:
    W: torch.Tensor  # (out, in) float64, a convolution unrolled
    b: torch.Tensor  # (out,) float64
    out_shape: tuple

    @property
    def absW(self) -> torch.Tensor:
        return self.W.abs()


@dataclass
class _Act:
    fn: object  # elementwise torch function, or a module (called on the tensor in its shape)
    lip: float
    elementwise: bool
    exact: bool
    shape: tuple  # the shape of one input of the activation (for a sort, which groups along dim 1)
    label: str


@dataclass
class LipschitzNet:
    """A float64 snapshot of a network for the Lipschitz certificate: its stages (affine layers as dense matrices,
    activations with their Lipschitz constants), its pair constants ``P`` (C, C) and the layer norms."""

    stages: list
    in_dim: int
    n_classes: int
    norms: list = field(default_factory=list)
    hidden_factor: float = 1.0
    P: torch.Tensor | None = None

    def forward_with_error(self, x: torch.Tensor):
        """Logits ẑ (B, C) of flat float64 inputs x (B, D), evaluated in float64, and a bound (B, C) on
        |ẑ − z| where z is the exact (real-arithmetic) function of these float64 weights (module docstring)."""
        a, e = x, None
        for st in self.stages:
            if isinstance(st, _Affine):
                absW = st.absW
                n = st.W.shape[1]
                gamma = 2.0 * (n + 2) * _EPS  # ≥ γ_{n+1}, any summation order
                z = a @ st.W.T + st.b
                err = (a.abs() @ absW.T + st.b.abs()) * gamma
                if e is not None:
                    err = err + e @ absW.T
                a, e = z, err
            else:
                B = a.shape[0]
                if st.elementwise:
                    out = st.fn(a)
                    prop = st.lip * e
                else:
                    out = st.fn(a.reshape(B, *st.shape)).reshape(B, -1)
                    prop = st.lip * e.amax(dim=1, keepdim=True).expand_as(out)
                if not st.exact:
                    prop = prop + _ACT_ULPS * _EPS * out.abs() + 1e-300
                a, e = out, prop
        return a, e

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_with_error(x)[0]


# ----------------------------------------------------------------------------------------------------------------
# reading a network
# ----------------------------------------------------------------------------------------------------------------


def _check_eval(model: nn.Module) -> None:
    """Parametrised weights (spectral normalisation, Björck orthonormalisation) change at every forward in train
    mode: the function being certified must be fixed."""
    from torch.nn.utils import parametrize

    for name, m in model.named_modules():
        if parametrize.is_parametrized(m) and m.training:
            raise SorobustError(f"layer {name or '(top)'} ({type(m).__name__}) has parametrised weights and is in "
                                f"train mode, where they change at every forward pass; call model.eval() before "
                                f"certifying it")


def _dense_affine(module: nn.Module, in_shape: tuple) -> _Affine:
    """The affine layer as a float64 dense matrix and bias (a convolution through a float64 copy, unrolled)."""
    w = module.weight.detach()
    if isinstance(module, nn.Linear):
        W = w.to(torch.float64)
        out_shape = (module.out_features,)
        b = module.bias
        b = torch.zeros(W.shape[0], dtype=torch.float64, device=W.device) if b is None else b.detach().double()
        return _Affine(W.clone(), b.clone(), out_shape)
    conv = nn.Conv2d(module.in_channels, module.out_channels, module.kernel_size, stride=module.stride,
                     padding=models._conv_padding(module), dilation=module.dilation, groups=module.groups,
                     bias=module.bias is not None, device=w.device, dtype=torch.float64)
    with torch.no_grad():
        conv.weight.copy_(w)
        if module.bias is not None:
            conv.bias.copy_(module.bias.detach())
    op = models.AffineOp(conv, in_shape)
    with torch.no_grad():
        W = op.dense().detach().clone()
        b = op.bias.detach().clone()
    return _Affine(W, b, tuple(op.out_shape))


def _from_network(net: models.Network) -> list:
    ops = net.ops()
    act = net.activation
    stages = []
    for k, op in enumerate(ops):
        aff = _dense_affine(op.module, op.in_shape)
        stages.append(aff)
        if k + 1 < len(ops):
            stages.append(_Act(act.fn, float(act.g), True, act.name == "relu", aff.out_shape, act.label))
    return stages


def _activation(m: nn.Module, where: str):
    """(fn, Lipschitz constant, elementwise, exact, label) of an activation module; None if ``m`` is not one."""
    if isinstance(m, activations.Layer):
        a = m.act
        return a.fn, float(a.g), True, a.name == "relu", a.label
    if isinstance(m, nn.ReLU):
        return torch.relu, 1.0, True, True, "relu"
    if isinstance(m, nn.Sigmoid):
        return torch.sigmoid, 0.25, True, False, "sigmoid"
    if isinstance(m, nn.Tanh):
        return torch.tanh, 1.0, True, False, "tanh"
    if isinstance(m, nn.Softplus):
        if math.isfinite(float(m.threshold)):
            raise SorobustError(f"{where}: torch's Softplus returns its input where beta·z > threshold, a jump that "
                                f"no Lipschitz bound covers; build it with threshold=math.inf")
        a = activations.softplus(float(m.beta))
        return a.fn, float(a.g), True, False, a.label
    if type(m).__name__ in _SORT_ACTIVATIONS and hasattr(m, "group_size"):
        coef = float(getattr(m, "_coefficient_lip", 1.0))
        return m, abs(coef), False, coef == 1.0, type(m).__name__
    return None


def _sequence_leaves(module: nn.Module, prefix: str = "") -> list:
    if isinstance(module, nn.Sequential):
        out = []
        for name, child in module.named_children():
            out.extend(_sequence_leaves(child, f"{prefix}.{name}" if prefix else name))
        return out
    return [(prefix or "0", module)]


def _from_sequence(model: nn.Module, in_shape: tuple | None) -> list:
    """Stages of a plain (nested) nn.Sequential, or a single Linear / Conv2d, that :func:`models.as_network`
    refuses: a linear classifier, mixed activations, deel-torchlip's sorting activations."""
    stages: list = []
    shape = None
    for name, m in _sequence_leaves(model):
        where = models._layer_name(name, m)
        if isinstance(m, nn.Identity):
            continue
        if isinstance(m, nn.modules.dropout._DropoutNd):
            if m.training and m.p > 0:
                raise SorobustError(f"{where} is in train mode, where it drops units at random: call module.eval()")
            continue
        if isinstance(m, nn.Flatten):
            if (m.start_dim, m.end_dim) != (1, -1):
                raise SorobustError(f"{where}: only nn.Flatten() (start_dim=1, end_dim=-1) is supported")
            shape = None if shape is None else (math.prod(shape),)
            continue
        if isinstance(m, nn.Unflatten):
            size = tuple(int(v) for v in m.unflattened_size)
            if m.dim != 1 or (shape is not None and math.prod(shape) != math.prod(size)):
                raise SorobustError(f"{where}: only nn.Unflatten(1, (C, H, W)) of a matching flat tensor is supported")
            shape = size
            continue
        if isinstance(m, nn.Linear):
            if shape is not None and shape != (m.in_features,):
                raise SorobustError(f"{where} takes {m.in_features} inputs but receives a {shape} tensor")
            aff = _dense_affine(m, (m.in_features,))
            stages.append(aff)
            shape = aff.out_shape
            continue
        if isinstance(m, nn.Conv2d):
            if m.padding_mode != "zeros":
                raise SorobustError(f"{where}: padding_mode '{m.padding_mode}' is not supported, only 'zeros'")
            if m.padding == "same" and any(d * (k - 1) % 2 for d, k in zip(m.dilation, m.kernel_size)):
                raise SorobustError(f"{where}: padding 'same' is asymmetric for this kernel; give it as numbers")
            if shape is None:
                shape = tuple(in_shape) if in_shape is not None and len(in_shape) == 3 else (m.in_channels, 28, 28)
            if len(shape) != 3 or shape[0] != m.in_channels:
                raise SorobustError(f"{where} takes {m.in_channels} channels but receives a {shape} tensor")
            aff = _dense_affine(m, shape)
            stages.append(aff)
            shape = aff.out_shape
            continue
        act = _activation(m, where)
        if act is None:
            raise SorobustError(f"{where}: not a layer the Lipschitz certificate reads (Linear, Conv2d, Flatten, "
                                f"Unflatten, Sigmoid, Tanh, Softplus, ReLU, deel-torchlip GroupSort)")
        if not stages:
            raise SorobustError(f"{where} comes before any Linear or Conv2d layer")
        fn, lip, elementwise, exact, label = act
        stages.append(_Act(fn, lip, elementwise, exact, tuple(shape), label))
    if not stages or not isinstance(stages[-1], _Affine):
        raise SorobustError("the Lipschitz certificate needs a network ending with its logits' Linear layer")
    if len(stages[-1].out_shape) != 1 or stages[-1].out_shape[0] < 2:
        raise SorobustError(f"the network's output has shape {stages[-1].out_shape}, not a vector of ≥ 2 logits")
    return stages


def _read(model: nn.Module, in_shape: tuple | None) -> list:
    if isinstance(model, models.Network):
        return _from_network(model)
    try:
        net = models.as_network(model, in_shape)
    except SorobustError as err:
        if not isinstance(model, (nn.Sequential, nn.Linear, nn.Conv2d)):
            raise
        try:
            return _from_sequence(model, in_shape)
        except SorobustError as err2:
            raise err2 from err
    return _from_network(net)


def _hidden_factor(stages: list) -> tuple[float, list]:
    """Π ‖W_k‖₂ · Π Lip(σ) over every stage but the last affine layer, with the sound norms."""
    norms = []
    factor = 1.0
    for st in stages[:-1]:
        if isinstance(st, _Affine):
            nrm = float(_spectral_norm_upper(st.W))
            norms.append(nrm)
            factor *= nrm
        else:
            factor *= st.lip
    return factor, norms


def _snapshot_uncached(model: nn.Module, in_shape: tuple | None) -> LipschitzNet:
    from torch.nn.utils import parametrize

    _check_eval(model)
    with torch.no_grad(), parametrize.cached():
        stages = _read(model, in_shape)
    last = stages[-1]
    factor, norms = _hidden_factor(stages)
    Wl = last.W
    D = torch.cdist(Wl.unsqueeze(0), Wl.unsqueeze(0), compute_mode="donot_use_mm_for_euclid_dist")[0]
    n_max = max(max(st.W.shape) for st in stages if isinstance(st, _Affine))
    widen = 1.0 + 8.0 * (n_max + len(stages) + 8) * _EPS
    P = D * (factor * widen)
    P.fill_diagonal_(0.0)
    in_dim = stages[0].W.shape[1]
    return LipschitzNet(stages=stages, in_dim=in_dim, n_classes=Wl.shape[0], norms=norms, hidden_factor=factor, P=P)


#: module → (key, LipschitzNet): weak, so a model's cache goes with it; the key changes with its weights
_CACHE: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _key(model: nn.Module, in_shape):
    return (tuple((p.data_ptr(), p._version, p.dtype, tuple(p.shape)) for p in model.parameters()),
            tuple((b.data_ptr(), b._version, b.dtype, tuple(b.shape)) for b in model.buffers()),
            tuple(m.training for m in model.modules()), repr(model), None if in_shape is None else tuple(in_shape))


def snapshot(model: nn.Module, in_shape: tuple | None = None) -> LipschitzNet:
    """The float64 :class:`LipschitzNet` of ``model`` (cached per model; recomputed when its weights change)."""
    owner = model.source if isinstance(model, models.Network) else model
    key = _key(model, in_shape)
    hit = _CACHE.get(owner)
    if hit is not None and hit[0] == key:
        return hit[1]
    snap = _snapshot_uncached(model, in_shape)
    _CACHE[owner] = (key, snap)
    return snap


def pair_constants(model: nn.Module, in_shape: tuple | None = None) -> torch.Tensor:
    """The [C, C] float64 matrix of L_{y,t}, sound upper bounds on the ℓ2 Lipschitz constant of x ↦ z_y − z_t
    (module docstring; 0 on the diagonal). Computed once per model and cached (recomputed when the weights change).

    Args:
        model: the package's MLP or conv net, a user's ``nn.Sequential`` (read through
            :func:`sorobust.models.as_network`, or here for what only a Lipschitz bound covers), a single Linear.
        in_shape: the shape (C, H, W) of one input, for a network starting with a Conv2d (default (C, 28, 28)).
    """
    return snapshot(model, in_shape).P.clone()


def certified_radius(model, x: torch.Tensor, y: torch.Tensor, targets="all", steps=None,
                     generator: torch.Generator | None = None) -> dict:
    """Certified ℓ2 radii r(x) = min_t (z_y(x) − z_t(x)) / L_{y,t} (module docstring), all points batched.

    Args:
        model: any network :func:`pair_constants` reads.
        x: (B, …) inputs, flat or images; y: (B,) labels.
        targets: ``"all"`` (min over every wrong class: sound), ``"runner-up"`` (the reference protocol: only the
            class with the largest other logit), ``"random"`` (seeded by ``generator``) or a (B, K) tensor.
        steps: unused (the radius is in closed form; accepted for the baselines' common signature).
        generator: for ``targets="random"``.

    Returns:
        a dict of per-point tensors ``radius`` (in the model's dtype, rounded down; 0 where the point is
        misclassified or its margin is not provably positive, +inf where L_{y,t} = 0 and the margin is positive),
        ``target`` (the class attaining the minimum) and ``time_s``.
    """
    t0 = time.perf_counter()
    params = list(model.parameters())
    dt = params[0].dtype if params else torch.float32
    in_shape = models.input_shape_of(x)
    snap = snapshot(model, in_shape)
    device = snap.P.device
    B = x.shape[0]
    x64 = x.reshape(B, -1).to(device=device, dtype=torch.float64)
    if x64.shape[1] != snap.in_dim:
        raise SorobustError(f"inputs of shape {tuple(x.shape[1:])} hold {x64.shape[1]} values, but the network "
                            f"takes {snap.in_dim}")
    y = y.to(device)
    with torch.no_grad():
        z, err = snap.forward_with_error(x64)
        tt, _ = _targets(z, y, targets, generator)
        tt = tt.to(device)
        yy = y.reshape(B, 1).expand_as(tt)
        f = z.gather(1, yy) - z.gather(1, tt)
        slack = 2.0 * (err.gather(1, yy) + err.gather(1, tt) + _EPS * f.abs())
        ninf = torch.tensor(-math.inf, dtype=torch.float64, device=device)
        f_lo = torch.nextafter(f - slack, ninf)
        L = snap.P[yy, tt]
        q = torch.nextafter(f_lo / L, ninf)
        q = torch.where(L > 0, q, torch.where(f_lo > 0, math.inf, -math.inf))
        r64, j = q.min(dim=1)
        target = tt.gather(1, j.reshape(B, 1)).squeeze(1)
        r64 = r64.clamp(min=0.0)
        radius = _round_down(r64, dt)
    return {"radius": radius, "target": target, "time_s": time.perf_counter() - t0}
