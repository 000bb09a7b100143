"""Test-only helpers for the CROWN/IBP oracles (baselines.md §1).

* :func:`load_auto_lirpa` imports PyPI ``auto-lirpa==0.3`` (installed with ``--no-deps``) on a current torch and
  numpy 2 after applying project-written monkeypatches:

  1. ``numpy.lib.arraysetops`` (removed in numpy 2) is stubbed with ``isin``;
  2. ``torch.onnx.symbolic_helper._set_opset_version`` (gone from torch ≥ 2.x) is re-created: it stores the opset
     in the TorchScript exporter's globals;
  3. ``torch._C.Node.__getitem__`` (attribute access by name, ``n[k]``, used by its graph parser) is added back on
     top of ``symbolic_helper._node_get``;
  4. ``BoundedModule._named_members`` is wrapped to accept (and drop) the ``remove_duplicate`` keyword that
     ``nn.Module.parameters()`` passes nowadays;
  5. ``BoundSoftplus`` gets a linear relaxation (0.3 has none): the chord above and the tangent at the midpoint
     below, the rule sorobust's CROWN uses for convex softplus; its ``forward`` becomes log(1 + eᶻ) exactly (torch's
     ``Softplus`` switches to z above its threshold), so that interval bounds use the same function as sorobust.

  Build a ``BoundedModule`` only after ``torch.set_default_dtype(torch.float64)`` when bounding in float64: 0.3's
  sigmoid/tanh tangent tables are made in the default dtype.

* :func:`to_sequential` turns a sorobust ``MLP``/``ConvNet`` into a plain ``nn.Sequential`` with the same weights
  (auto_LiRPA traces modules; convex_adversarial accepts only Sequential nets of Linear/Conv2d/ReLU/Flatten).
"""

from __future__ import annotations

import sys
import types
import warnings

import torch
import torch.nn as nn

_LOADED = None


def _patch_numpy():
    import numpy as np

    if "numpy.lib.arraysetops" in sys.modules:
        return
    try:
        import numpy.lib.arraysetops  # noqa: F401  (numpy < 2 still has it)
    except ImportError:
        stub = types.ModuleType("numpy.lib.arraysetops")
        stub.isin = np.isin
        sys.modules["numpy.lib.arraysetops"] = stub


def _patch_torch_onnx():
    import torch.onnx.symbolic_helper as sh

    if not hasattr(sh, "_set_opset_version"):
        def _set_opset_version(opset_version: int) -> None:
            try:
                from torch.onnx._internal.torchscript_exporter._globals import GLOBALS
            except ImportError:  # older torch layouts
                from torch.onnx._globals import GLOBALS
            GLOBALS.export_onnx_opset_version = opset_version

        sh._set_opset_version = _set_opset_version

    if not hasattr(torch._C.Node, "__getitem__"):
        torch._C.Node.__getitem__ = lambda self, key: sh._node_get(self, key)


def _patch_named_members(auto_lirpa):
    cls = auto_lirpa.BoundedModule
    orig = cls._named_members
    if getattr(orig, "_sorobust_shim", False):
        return

    def _named_members(self, get_members_fn, prefix="", recurse=True, remove_duplicate=True):
        return orig(self, get_members_fn, prefix=prefix, recurse=recurse)

    _named_members._sorobust_shim = True
    cls._named_members = _named_members


def _exact_softplus(z):
    return torch.logaddexp(z, torch.zeros_like(z))


def _patch_softplus(auto_lirpa):
    from auto_LiRPA.operators import activation as act_ops

    cls = act_ops.BoundSoftplus

    def forward(self, x):
        return _exact_softplus(x)

    def bound_relax(self, x):
        # convex: chord through (l, σ(l)), (u, σ(u)) above; tangent at the midpoint below
        lo, up = x.lower, x.upper
        f_lo, f_up = _exact_softplus(lo), _exact_softplus(up)
        width = up - lo
        narrow = width < 1e-12
        k_chord = torch.where(narrow, torch.sigmoid(up), (f_up - f_lo) / torch.where(narrow, torch.ones_like(width),
                                                                                     width))
        self.uw = k_chord
        self.ub = f_lo - k_chord * lo
        mid = (lo + up) / 2
        self.lw = torch.sigmoid(mid)
        self.lb = _exact_softplus(mid) - self.lw * mid

    cls.forward = forward
    cls.bound_relax = bound_relax


def load_auto_lirpa():
    """Import auto_LiRPA 0.3 with the patches above (idempotent); returns the ``auto_LiRPA`` module.

    Raises ImportError when the package is not installed."""
    global _LOADED
    if _LOADED is not None:
        return _LOADED
    # Its import decorates functions with the deprecated torch.jit.script (a FutureWarning each) and calls
    # warnings.simplefilter("once"), which would override our filter and leak into the rest of the test session:
    # silence the former, keep the latter inside this block.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        simplefilter = warnings.simplefilter
        warnings.simplefilter = lambda *a, **k: None
        try:
            _patch_numpy()
            _patch_torch_onnx()
            import auto_LiRPA
        finally:
            warnings.simplefilter = simplefilter

    _patch_named_members(auto_LiRPA)
    _patch_softplus(auto_LiRPA)
    _LOADED = auto_LiRPA
    return auto_LiRPA


class ExactSoftplus(nn.Module):
    """log(1 + eᶻ) as an ``nn.Softplus`` (traced to the ONNX Softplus op) with a threshold no input reaches."""

    def __init__(self):
        super().__init__()
        self.inner = nn.Softplus(beta=1.0, threshold=1e30)

    def forward(self, x):
        return self.inner(x)


def activation_module(name: str) -> nn.Module:
    return {"relu": nn.ReLU, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh, "softplus": ExactSoftplus}[name]()


def to_sequential(model) -> nn.Sequential:
    """A plain ``nn.Sequential`` computing the same function as a sorobust MLP (on flat inputs) or ConvNet (on
    (B, C, H, W) images), with copies of its weights."""
    dtype = next(model.parameters()).dtype
    act = model.activation_name
    mods: list[nn.Module] = []
    if model.kind == "mlp":
        layers = model.layers()
        for i, layer in enumerate(layers):
            lin = nn.Linear(layer.in_features, layer.out_features).to(dtype)
            lin.load_state_dict(layer.state_dict())
            mods.append(lin)
            if i < len(layers) - 1:
                mods.append(activation_module(act))
    else:
        c = model.conv1
        conv = nn.Conv2d(c.in_channels, c.out_channels, c.kernel_size, stride=c.stride, padding=0).to(dtype)
        conv.load_state_dict(c.state_dict())
        fc = nn.Linear(model.fc2.in_features, model.fc2.out_features).to(dtype)
        fc.load_state_dict(model.fc2.state_dict())
        mods = [conv, activation_module(act), nn.Flatten(), fc]
    return nn.Sequential(*mods).eval()
