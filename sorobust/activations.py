"""Activation functions σ with their first and second derivatives and their exact bounds.

The curvature bounds of the paper (Theorems 3 and 4 of Singla & Feizi, ICLR-2020 numbering; paper.md §1.4–1.6)
need, for each activation σ,

* ``g = sup_z |σ'(z)|``                (Theorem 4),
* ``h_L ≤ σ''(z) ≤ h_U`` for all z     (Theorem 3), and ``h = max(|h_L|, |h_U|)`` (Theorem 4),

and the *local* bounds need the range of σ' and σ'' over an interval [l, u] of pre-activations.

Closed forms (derived here, checked numerically in ``tests/test_activations.py``):

* **sigmoid** s(z) = 1/(1+e^{-z}): σ' = s(1−s) ∈ (0, 1/4], so g = 1/4 (attained at z = 0).
  σ'' = s(1−s)(1−2s). Setting (σ'')' = σ'·(1 − 6s + 6s²) = 0 gives s = (3 ∓ √3)/6, where s(1−s) = 1/6 and
  1 − 2s = ±1/√3, hence σ'' ∈ [−1/(6√3), 1/(6√3)] ≈ ±0.0962250, attained at z = ∓log((3+√3)/(3−√3)) ≈ ∓1.3170.
* **tanh** t = tanh z: σ' = 1 − t² ∈ (0, 1], g = 1 (at z = 0). σ'' = −2t(1−t²); its critical points solve
  6t² − 2 = 0, t = ±1/√3, hence σ'' ∈ [−4/(3√3), 4/(3√3)] ≈ ±0.7698004, attained at z = ±atanh(1/√3) ≈ ±0.6585.
* **softplus** log(1+e^z): σ' = s ∈ (0, 1), g = 1 (a supremum, not attained). σ'' = s(1−s) ∈ (0, 1/4], hence
  h_L = 0, h_U = 1/4 (at z = 0). Softplus is convex, which is why its N matrix in Theorem 3 only sees the
  negative entries of w.
* **softplus with β** (torch's ``nn.Softplus(beta=β)``): σ_β(z) = log(1+e^{βz})/β = softplus(βz)/β. By the chain rule
  σ_β' = s(βz) ∈ (0, 1), so g = 1 as for β = 1, and σ_β'' = β·s(βz)(1 − s(βz)) ∈ (0, β/4]: h_L = 0, h_U = β/4, the
  β = 1 constants with σ'' scaled by β; σ_β'' has its one critical point at z = 0 (:func:`softplus`). torch's
  ``threshold`` (σ(z) = z where βz > threshold) is not part of this function: :func:`sorobust.models.as_network`
  refuses a finite threshold unless told to certify the smooth softplus in its place.
* **relu** is not twice differentiable: its Hessian is 0 almost everywhere but the second-order theory does not
  apply (paper: "this result does not hold for ReLU networks"). It is provided for the baselines; asking for its
  curvature constants raises an error.

σ' and σ'' are evaluated in cancellation-free forms (σ(z)σ(−z) rather than s(1−s), 4e^{−2|z|}/(1+e^{−2|z|})²
rather than 1 − tanh²z), accurate to a few ulps in the tails. Softplus is log(1+eᶻ) evaluated exactly
(``torch.logaddexp``); torch's ``F.softplus`` returns z itself above 20, which differs by < 2·10⁻⁹.

Range of σ' and σ'' over [l, u]: each is smooth with finitely many critical points (listed in
``Activation.crit1``/``crit2``), so its extremes over [l, u] are attained at l, u or a critical point inside.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from .errors import SorobustError

ACTIVATIONS = ("sigmoid", "tanh", "softplus", "relu")
SMOOTH_ACTIVATIONS = ("sigmoid", "tanh", "softplus")

# Relative widening applied to evaluated derivative ranges, to cover floating-point rounding of σ', σ''.
_ROUND = 1e-12


def _sig_d1(z):
    return torch.sigmoid(z) * torch.sigmoid(-z)  # s(1−s) without cancellation


def _sig_d2(z):
    return -_sig_d1(z) * torch.tanh(z / 2)  # s(1−s)(1−2s), as 1 − 2s = −tanh(z/2)


def _tanh_d1(z):
    e = torch.exp(-2 * z.abs())
    return 4 * e / (1 + e) ** 2  # sech²z = 1 − tanh²z without cancellation


def _tanh_d2(z):
    return -2 * torch.tanh(z) * _tanh_d1(z)


def _softplus(z):
    return torch.logaddexp(z, torch.zeros_like(z))  # log(1+eᶻ) exactly (F.softplus switches to z above 20)


def _sp_d1(z):
    return torch.sigmoid(z)


def _sp_d2(z):
    return _sig_d1(z)


def _relu_d1(z):
    return (z > 0).to(z.dtype)


def _relu_d2(z):
    return torch.zeros_like(z)


_SIG_Z2 = math.log((3 + math.sqrt(3)) / (3 - math.sqrt(3)))  # ≈ 1.3170: extremes of sigmoid''
_TANH_Z2 = math.atanh(1 / math.sqrt(3))  # ≈ 0.6585: extremes of tanh''


@dataclass(frozen=True)
class Activation:
    """An activation σ with σ', σ'' and their global bounds.

    Attributes:
        name: one of :data:`ACTIVATIONS`.
        fn, d1, d2: σ, σ', σ'' as elementwise torch functions.
        g: sup |σ'| (Theorem 4).
        h_lo, h_hi: inf σ'' and sup σ'' (Theorem 3's h_L, h_U).
        crit1, crit2: the critical points of σ' and σ'' (where their extremes over an interval can lie).
        smooth: whether σ is twice continuously differentiable (the second-order theory applies).
        beta: softplus's β (σ(z) = log(1+e^{βz})/β); 1 for the other activations.
    """

    name: str
    fn: Callable
    d1: Callable
    d2: Callable
    g: float
    h_lo: float
    h_hi: float
    crit1: tuple
    crit2: tuple
    smooth: bool = True
    beta: float = 1.0

    @property
    def label(self) -> str:
        """The name, with β where it is not 1: ``softplus``, ``softplus(beta=2)``."""
        return self.name if self.beta == 1.0 else f"{self.name}(beta={self.beta:g})"

    @property
    def h(self) -> float:
        """h = sup |σ''| (Theorem 4)."""
        return max(abs(self.h_lo), abs(self.h_hi))

    def require_smooth(self) -> None:
        if not self.smooth:
            raise SorobustError(
                f"activation '{self.name}' is not twice differentiable, so curvature bounds and CRC do not apply; "
                f"use one of {', '.join(SMOOTH_ACTIVATIONS)} (or a CROWN/IBP certificate for relu nets)"
            )

    @staticmethod
    def _range(fun, crit, lo, hi):
        """Elementwise [min, max] of ``fun`` over [lo, hi] (extremes at endpoints or critical points)."""
        vals_lo = torch.minimum(fun(lo), fun(hi))
        vals_hi = torch.maximum(fun(lo), fun(hi))
        for c in crit:
            inside = (lo <= c) & (c <= hi)
            fc = fun(torch.full_like(lo, c))
            vals_lo = torch.where(inside, torch.minimum(vals_lo, fc), vals_lo)
            vals_hi = torch.where(inside, torch.maximum(vals_hi, fc), vals_hi)
        pad_lo = _ROUND * vals_lo.abs() + 1e-300
        pad_hi = _ROUND * vals_hi.abs() + 1e-300
        return vals_lo - pad_lo, vals_hi + pad_hi

    def d1_range(self, lo: torch.Tensor, hi: torch.Tensor):
        """Range [min, max] of σ' over each interval [lo, hi] (elementwise), widened for rounding.

        σ' ≥ 0 for every supported activation, so the lower end is clamped at 0 and the upper end at ``g``.
        """
        a, b = self._range(self.d1, self.crit1, lo, hi)
        return a.clamp(min=0.0), b.clamp(max=self.g)

    def d2_range(self, lo: torch.Tensor, hi: torch.Tensor):
        """Range [min, max] of σ'' over each interval [lo, hi] (elementwise), widened for rounding and clipped to
        the global range [h_L, h_U]."""
        self.require_smooth()
        a, b = self._range(self.d2, self.crit2, lo, hi)
        return a.clamp(min=self.h_lo), b.clamp(max=self.h_hi)


_SQ3 = math.sqrt(3.0)

_REGISTRY = {
    "sigmoid": Activation(
        "sigmoid", torch.sigmoid, _sig_d1, _sig_d2, g=0.25, h_lo=-1 / (6 * _SQ3), h_hi=1 / (6 * _SQ3),
        crit1=(0.0,), crit2=(-_SIG_Z2, _SIG_Z2),
    ),
    "tanh": Activation(
        "tanh", torch.tanh, _tanh_d1, _tanh_d2, g=1.0, h_lo=-4 / (3 * _SQ3), h_hi=4 / (3 * _SQ3),
        crit1=(0.0,), crit2=(-_TANH_Z2, _TANH_Z2),
    ),
    "softplus": Activation(
        "softplus", _softplus, _sp_d1, _sp_d2, g=1.0, h_lo=0.0, h_hi=0.25, crit1=(), crit2=(0.0,),
    ),
    "relu": Activation(
        "relu", F.relu, _relu_d1, _relu_d2, g=1.0, h_lo=0.0, h_hi=0.0, crit1=(), crit2=(), smooth=False,
    ),
}


@functools.lru_cache(maxsize=None)
def softplus(beta: float = 1.0) -> Activation:
    """softplus_β(z) = log(1+e^{βz})/β, torch's ``nn.Softplus(beta=β)`` without its threshold (module docstring).

    σ' = s(βz), σ'' = β s(βz) s(−βz): g = 1, h_L = 0, h_U = β/4 (the β = 1 constants of paper.md §1.6, σ''
    scaled by β by the chain rule). β = 1 returns the registry's softplus itself, so its numbers are unchanged.
    """
    beta = float(beta)
    if not (math.isfinite(beta) and beta > 0):
        raise SorobustError(f"softplus beta must be a positive finite number, got {beta}")
    if beta == 1.0:
        return _REGISTRY["softplus"]
    return Activation(
        "softplus", lambda z: _softplus(beta * z) / beta, lambda z: torch.sigmoid(beta * z),
        lambda z: beta * _sig_d1(beta * z), g=1.0, h_lo=0.0, h_hi=beta / 4, crit1=(), crit2=(0.0,), beta=beta,
    )


class Layer(nn.Module):
    """An :class:`Activation` as an ``nn.Module`` (``forward`` is ``act.fn``), so that it can stand in a layer
    sequence: the package's own nets describe themselves with it (:meth:`sorobust.models.MLP.layer_sequence`),
    and a user may put ``Layer("softplus")`` in an ``nn.Sequential`` for the exact softplus."""

    def __init__(self, act: "Activation | str"):
        super().__init__()
        self.act = get(act) if isinstance(act, str) else act

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.act.fn(z)

    def extra_repr(self) -> str:
        return self.act.label


def get(name: str) -> Activation:
    """The :class:`Activation` called ``name``; a one-line error lists the valid names otherwise."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise SorobustError(f"unknown activation '{name}'; choose one of {', '.join(ACTIVATIONS)}") from None
