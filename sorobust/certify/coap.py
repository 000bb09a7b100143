"""COAP: the convex outer adversarial polytope (Wong & Kolter) under an ℓ2 ball, through ``convex_adversarial``.

* Wong & Kolter 2018, "Provable defenses against adversarial examples via the convex outer adversarial polytope"
  (ICML): each relu z ↦ [z]₊ with pre-activation interval [l, u] is replaced by its convex hull (the triangle
  relaxation). The LP over this outer polytope has a dual whose feasible points are computed by one backward pass
  of a "dual network" (their Theorem 1): ν̂_k = W_kᵀ ν_{k+1}, ν_k = D_k ν̂_k with D_k = 1 on active neurons, 0 on
  dead ones and u/(u − l) on unstable ones, starting from ν_L = −c. It gives the lower bound of cᵀz_L
      J_ε(x, ν) = −Σ_k ν_{k+1}ᵀ b_k − x0ᵀ ν̂_1 − ε‖ν̂_1‖_* + Σ_k Σ_{i unstable} l_i [ν_{k,i}]₊,
  ‖·‖_* the dual norm of the threat model. The intermediate bounds l, u come from the same dual applied to
  c = ±e_i, layer by layer (their Algorithm 1), so no LP is solved. Robust training minimises the cross-entropy of
  −J_ε(x, C) with C rows e_y − e_j (their Theorem 2: an upper bound on the worst-case loss).
* Wong, Schmidt, Metzen & Kolter 2018, "Scaling provable adversarial defenses" (NeurIPS): the dual for general
  norm balls (ℓ2: ‖·‖_* = ‖·‖₂) and random projections for training, which estimate ‖ν̂_1‖₂ by ‖ν̂_1 R‖₂/√k
  (R an n×k standard normal matrix) and the relu terms by medians of Cauchy projections, at a cost linear
  instead of quadratic in the hidden units. That is a *probabilistic estimate*, not a bound: training only.

For relu nets this bound equals CROWN with the "same-slope" relu lower bound (Fast-Lin), which
:mod:`sorobust.certify.crown` implements independently (baselines.md §1, §5). Here the bound comes from the
``convex_adversarial`` 0.4.4 package itself (``DualNetwork(..., norm_type="l2")``), so the COAP column is the
authors' code. Reported certificates always use the exact ``"l2"`` dual bound; ``"l2_normal"`` (random
projections, ``proj`` of them, as in their ``examples/mnist.py --norm_train l2_normal --proj 50``) is only a
training loss.

COAP is relu-only: the dual network has no layer for sigmoid, tanh or softplus, and :func:`to_sequential` rejects
them with a :class:`~sorobust.errors.SorobustError`.

Install: ``pip install --no-deps convex-adversarial==0.4.4`` (it needs only torch and numpy).
"""

from __future__ import annotations

import time

import torch
import torch.nn as nn

from ..errors import SorobustError
from .crown import bisect_radius, radius_start

NORM_TYPES = ("l2", "l2_normal")


def _ca():
    try:
        import convex_adversarial
    except ImportError:  # pragma: no cover - depends on the environment
        raise SorobustError("COAP needs the convex_adversarial package; "
                            "install it with: pip install --no-deps convex-adversarial==0.4.4") from None
    return convex_adversarial


def _check_relu(model) -> None:
    name = getattr(model, "activation_name", None)
    if name != "relu":
        raise SorobustError(f"COAP (convex_adversarial) supports relu nets only, but this model uses '{name}'; "
                            f"use the CROWN/IBP certificates for {name} nets")


def to_sequential(model) -> nn.Sequential:
    """The relu :class:`~sorobust.models.MLP` or :class:`~sorobust.models.ConvNet` as an ``nn.Sequential`` of the
    layer types ``convex_adversarial`` knows (Flatten, Linear, Conv2d, ReLU).

    The Sequential holds the model's *own* ``nn.Linear``/``nn.Conv2d`` modules, so it shares their Parameter
    objects: gradients of a loss computed on it land on ``model.parameters()``, and an optimizer over those trains
    the model. Input shapes: an MLP's Sequential starts with ``nn.Flatten`` and takes (B, in_dim) or images; a
    ConvNet's takes images (B, C, H, W) (``convex_adversarial`` has no dual layer for ``nn.Unflatten``; use
    :func:`_inputs` to reshape). Raises :class:`SorobustError` for non-relu activations.
    """
    _check_relu(model)
    kind = getattr(model, "kind", None)
    if kind == "mlp":
        layers = model.layers()
        mods: list[nn.Module] = [nn.Flatten()]
        for i, layer in enumerate(layers):
            mods.append(layer)
            if i < len(layers) - 1:
                mods.append(nn.ReLU())
    elif kind == "cnn":
        mods = [model.conv1, nn.ReLU(), nn.Flatten(), model.fc2]
    else:
        raise SorobustError(f"COAP supports the sorobust mlp and cnn architectures, not '{type(model).__name__}'")
    return nn.Sequential(*mods)


def _inputs(model, x: torch.Tensor) -> torch.Tensor:
    """x in the model's dtype and in the input shape of :func:`to_sequential`'s net: (B, in_dim) for an MLP,
    (B, C, H, W) for a ConvNet."""
    dt = next(model.parameters()).dtype
    x = x.to(dt)
    if getattr(model, "kind", None) == "cnn":
        return x.reshape(x.shape[0], *model.in_shape)
    return x.flatten(1)


def _spec(y: torch.Tensor, targets: torch.Tensor, n_classes: int, dtype) -> torch.Tensor:
    """C (B, K, n_classes) with rows e_y − e_t."""
    eye = torch.eye(n_classes, dtype=dtype, device=y.device)
    return eye[y].unsqueeze(1) - eye[targets]


def _eps_arg(eps, B: int, like: torch.Tensor):
    """eps as a Python float if it is one value, else a (B,) tensor (convex_adversarial's ``L2Ball`` broadcasts a
    per-example tensor: it unsqueezes it to each layer's shape in ``bounds`` and ``objective``)."""
    if isinstance(eps, torch.Tensor):
        if eps.numel() == 1:
            return float(eps)
        eps = eps.to(dtype=like.dtype, device=like.device).reshape(-1)
        if eps.numel() != B:
            raise ValueError(f"eps has {eps.numel()} values for a batch of {B}")
        return eps
    return float(eps)


def margin_bounds(model, x: torch.Tensor, y: torch.Tensor, eps, targets: torch.Tensor | None = None) -> torch.Tensor:
    """Exact ℓ2 dual lower bounds (B, K) on z_y − z_t over ‖x' − x‖₂ ≤ eps (Wong & Kolter's J(ν) with ‖·‖₂).

    ``DualNetwork(to_sequential(model), x, eps, norm_type="l2")`` applied to the rows e_y − e_t of C.
    ``targets`` (B, K) defaults to all t ≠ y. ``eps`` is a scalar or a per-point (B,) tensor: convex_adversarial's
    exact ``L2Ball`` broadcasts a per-example eps in every intermediate bound and in the objective, so the whole
    batch goes through one dual network (tested against per-point calls). Differentiable in the weights; wrap in
    ``torch.no_grad()`` when only the values are needed.
    """
    ca = _ca()
    seq = to_sequential(model)
    xi = _inputs(model, x)
    B = xi.shape[0]
    n = model.n_classes
    if targets is None:
        allc = torch.arange(n, device=y.device).expand(B, n)
        targets = allc[allc != y.reshape(B, 1)].reshape(B, n - 1)
    C = _spec(y, targets.reshape(B, -1), n, xi.dtype)
    dual = ca.DualNetwork(seq, xi, _eps_arg(eps, B, xi), norm_type="l2")
    return dual(C)


def certified_radius(model, x: torch.Tensor, y: torch.Tensor, targets="all", steps: int = 20, eps_max: float = 4.0,
                     generator: torch.Generator | None = None, batch_size: int = 64) -> dict:
    """Largest ε (to bisection precision ``eps_max``/2^steps) at which every exact COAP ℓ2 margin bound is positive.

    ``targets``: ``"all"`` (COAP's own protocol), ``"runner-up"``, ``"random"`` (seeded by ``generator``) or a
    (B, K) tensor, as in :func:`sorobust.certify.crown.certified_radius`. The bracket [0, eps_max] is doubled
    first while its upper end is still certified; then ``steps`` bisection steps, every point's bracket batched
    into one per-point-eps dual network, ``batch_size`` points at a time (the dual network holds
    O(batch · in_dim · width) numbers per layer). Runs under ``no_grad``.

    Returns a dict of per-point tensors ``radius`` (0 for misclassified points), ``target`` (the target whose
    bound is smallest at the returned radius), and ``time_s`` — the same as ``crown.certified_radius``.
    """
    _check_relu(model)
    t0 = time.perf_counter()
    x0 = _inputs(model, x)
    tt, radius, target, idx_all = radius_start(model, x0, y, targets, generator)
    bs = max(1, int(batch_size))
    for start in range(0, idx_all.numel(), bs):
        idx = idx_all[start:start + bs]
        xs, ys, ts = x0[idx], y[idx], tt[idx]

        @torch.no_grad()
        def check(eps, xs=xs, ys=ys, ts=ts):
            lb = margin_bounds(model, xs, ys, eps, ts)
            return lb.min(1).values > 0, ts.gather(1, lb.argmin(1, keepdim=True)).squeeze(1)

        radius[idx], target[idx] = bisect_radius(check, target[idx], eps_max, steps, x0.dtype)
    return {"radius": radius, "target": target, "time_s": time.perf_counter() - t0}


def robust_loss(model, x: torch.Tensor, y: torch.Tensor, eps, norm_type: str = "l2_normal", proj: int = 50,
                seed: int | None = None):
    """COAP's robust training loss, ``convex_adversarial.robust_loss``: returns ``(robust_ce, robust_err)``.

    With f = −J(C) for C rows e_y − e_j over *all* classes j (the row j = y is 0, so f_y = 0 and f_j = −lb_j),
    ``robust_ce`` is the mean cross-entropy CE(f, y) (Wong & Kolter's robust loss, their Theorem 2), a tensor
    differentiable into ``model.parameters()`` (the Sequential shares them), and ``robust_err`` (a float) the
    fraction of points with argmax f ≠ y, i.e. not certified at ``eps`` (a bound of exactly 0 may count either way).

    ``norm_type``: ``"l2_normal"`` (default) uses ``proj`` random projections (Wong et al. 2018): normal ones for
    the input's ℓ2 term when the input has more than ``proj`` dimensions, Cauchy medians for a relu layer's terms
    when the batch has more than ``proj`` unstable relus in it. It is a probabilistic *estimate* of the bound,
    cheap enough for training, and is never used for a reported certificate (that is :func:`margin_bounds` /
    :func:`certified_radius`, exact). When the input has no more than ``proj`` dimensions the library has no
    projected ``l2_normal`` (it raises), and the exact bound is used instead. ``"l2"`` is the exact dual bound
    (costly beyond one hidden layer). The projections draw from torch's global RNG; ``seed`` fixes them (the
    global RNG state is restored afterwards).

    ``eps``: a scalar, or for ``"l2"`` also a per-point (B,) tensor (``"l2_normal"`` needs one eps per batch:
    the library's projected ball does not broadcast a per-example eps).
    """
    if norm_type not in NORM_TYPES:
        raise ValueError(f"unknown norm_type '{norm_type}'; expected one of {NORM_TYPES}")
    ca = _ca()
    seq = to_sequential(model)
    xi = _inputs(model, x)
    e = _eps_arg(eps, xi.shape[0], xi)
    if norm_type == "l2_normal" and isinstance(e, torch.Tensor):
        if bool((e == e[0]).all()):
            e = float(e[0])
        else:
            raise SorobustError("robust_loss with norm_type l2_normal needs one eps for the whole batch; "
                                "use a scalar eps or norm_type l2")
    if norm_type == "l2_normal" and xi[0].numel() <= int(proj):
        # convex_adversarial 0.4.4 raises "Unknown estimation type: l2_normal" when the input has no more than
        # proj dimensions; projecting would then save nothing, so use the exact bound
        norm_type = "l2"
    kw = {"norm_type": norm_type, "proj": int(proj) if norm_type == "l2_normal" else None}
    if seed is None:
        return ca.robust_loss(seq, e, xi, y, **kw)
    devices = [xi.device] if xi.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        return ca.robust_loss(seq, e, xi, y, **kw)
