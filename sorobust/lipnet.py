"""1-Lipschitz MLPs from deel-torchlip (orthonormal layers + GroupSort), their HKR training loss and certificate.

Built from the library's layers (deel-torchlip 1.0.5, https://github.com/deel-ai/deel-torchlip, docs
https://deel-ai.github.io/deel-torchlip/):

* ``torchlip.SpectralLinear``: an ``nn.Linear`` whose weight is reparametrised (``torch.nn.utils.parametrize``) by
  spectral normalisation (power iteration, Miyato et al. 2018) followed by Björck orthonormalisation (Björck &
  Bowie 1971; used for Lipschitz nets by Anil, Lucas & Grosse 2019, "Sorting out Lipschitz function
  approximation", ICML): all singular values ≈ 1, so the layer is (approximately) 1-Lipschitz and gradient-norm
  preserving. ``torchlip.FrobeniusLinear(disjoint_neurons=False)`` divides the weight by its Frobenius norm instead
  (‖W‖₂ ≤ ‖W‖_F = 1: exactly 1-Lipschitz, but contracting).
* ``torchlip.GroupSort2``: sorts each pair of units (Anil et al. 2019): 1-Lipschitz and gradient-norm preserving.
* ``torchlip.HKRMulticlassLoss(alpha, min_margin)``: the hinge-Kantorovich-Rubinstein loss of Serrurier, Mamalet,
  González-Sanz, Boissin, Loubes & del Barrio 2021 ("Achieving robustness in classification using optimal
  transport with hinge regularization", CVPR), one-vs-all: α · hinge(min_margin) − (1 − α) · KR, on one-hot targets.

**Certificate.** The library's multiclass tutorial (docs, "Example 4: HKR multiclass and fooling") certifies a
1-Lipschitz network (the whole map x ↦ z(x), head included) by (top₁ − top₂)/√2: z_y − z_t = (e_y − e_t)ᵀ z has
Lipschitz constant ≤ ‖e_y − e_t‖₂ · 1 = √2 (:func:`margin_certificate`). That rests on every layer being exactly
1-Lipschitz, which the power iteration and the 15 Björck steps only approximate (measured: singular values up to
1 + 3·10⁻⁷ after training steps). :func:`sorobust.certify.lipschitz.certified_radius` reads the same network (in
eval mode) with exact, rounded-up spectral norms and per-pair constants ‖W_L[y] − W_L[t]‖₂ Π‖W_k‖₂, so it gives
the sound version of the same radius (≈ margin/√2 for orthonormal layers).

Train mode vs eval mode: in train mode the weights are re-normalised at every forward pass (one power-iteration
step, Björck from scratch); in eval mode they are the ones cached by the last train-mode forward. Certify in eval
mode (the certificate refuses a parametrised model in train mode).

Install: ``pip install deel-torchlip==1.0.5`` (needs only torch and numpy).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from .errors import SorobustError

LAYERS = ("spectral", "frobenius")


def _torchlip():
    try:
        from deel import torchlip
    except ImportError:  # pragma: no cover - depends on the environment
        raise SorobustError("1-Lipschitz nets need the deel-torchlip package; install it with: "
                            "pip install deel-torchlip==1.0.5") from None
    return torchlip


def lipschitz_mlp(widths=(784, 1024, 1024, 10), layer: str = "spectral", bias: bool = True) -> nn.Module:
    """A 1-Lipschitz MLP widths[0]-…-widths[-1]: Flatten, then torchlip linear layers with GroupSort2 between them.

    Args:
        widths: input size, hidden widths (even: GroupSort2 sorts pairs), number of classes.
        layer: ``"spectral"`` (``SpectralLinear``: spectral normalisation + Björck orthonormalisation, the library's
            default and its tutorials' choice; Anil et al. 2019) or ``"frobenius"`` (``FrobeniusLinear`` with
            ``disjoint_neurons=False``: W/‖W‖_F) for every layer, the head included, so that the whole map x ↦ z
            is 1-Lipschitz and :func:`margin_certificate`'s √2 applies.
        bias: whether the layers have biases.

    Returns:
        a ``torchlip.Sequential`` (an ``nn.Sequential``), on flat inputs or images.
    """
    tl = _torchlip()
    widths = [int(w) for w in widths]
    if len(widths) < 2 or min(widths) < 1:
        raise SorobustError(f"widths {widths}: give the input size, the hidden widths and the number of classes")
    if any(w % 2 for w in widths[1:-1]):
        raise SorobustError(f"hidden widths {widths[1:-1]} must be even: GroupSort2 sorts pairs of units")
    if layer not in LAYERS:
        raise SorobustError(f"layer '{layer}' is not one of {', '.join(LAYERS)}")

    def linear(i, o):
        if layer == "spectral":
            return tl.SpectralLinear(i, o, bias=bias)
        return tl.FrobeniusLinear(i, o, bias=bias, disjoint_neurons=False)

    mods: list[nn.Module] = [nn.Flatten()]
    for k, (i, o) in enumerate(zip(widths[:-1], widths[1:])):
        if k:
            mods.append(tl.GroupSort2())
        mods.append(linear(i, o))
    return tl.Sequential(*mods)


def hkr_loss(alpha: float = 0.99, min_margin: float = 0.25, n_classes: int = 10):
    """The multiclass HKR loss (Serrurier et al. 2021) as ``loss(logits, labels)`` with integer labels.

    ``torchlip.HKRMulticlassLoss(alpha, min_margin)`` on one-hot targets: α ∈ [0, 1] weighs the hinge term
    (each logit pushed beyond ±min_margin/2, so a satisfied hinge gives z_y − z_t ≥ min_margin and a certified
    radius ≥ min_margin/√2) against the Kantorovich-Rubinstein term (1 − α). The defaults are the library's
    multiclass tutorial (``alpha=100``, its older unbounded form, = 100/101 ≈ 0.99; ``min_margin=0.25``);
    larger margins and smaller α trade accuracy for robustness.
    """
    tl = _torchlip()
    crit = tl.HKRMulticlassLoss(alpha=alpha, min_margin=min_margin)

    def loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        onehot = torch.nn.functional.one_hot(labels.long(), num_classes=n_classes).to(logits.dtype)
        return crit(logits, onehot)

    return loss


def margin_certificate(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The library's certificate (z_y − max_{t≠y} z_t)/√2 for a 1-Lipschitz network (0 where misclassified).

    Valid only as far as the network is exactly 1-Lipschitz (module docstring); the sound radius is
    :func:`sorobust.certify.lipschitz.certified_radius`.
    """
    B = logits.shape[0]
    idx = torch.arange(B, device=logits.device)
    other = logits.clone()
    other[idx, y] = -torch.inf
    m = logits[idx, y] - other.max(1).values
    return (m / math.sqrt(2.0)).clamp(min=0)
