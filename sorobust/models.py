"""Architectures of the paper and checkpoint I/O.

* :func:`mlp` builds the paper's fully connected nets 784-1024^(L-1)-10 (``Net(num_layers)`` of the reference
  code ``singlasahil14/so-robust``; paper.md §3) for any depth L ≥ 2. Layers are named ``fc1 … fcL`` so that a
  state dict saved by the reference code loads as is.
* :func:`cnn` builds the single-hidden-layer convolutional net of the paper's CNN table (paper.md §3.5):
  conv (valid padding) → σ → linear. The paper does not give its size; the default, 5 filters of 3×3 with
  stride 1 (hidden width 5·26·26 = 3380), is CNN-Cert's ``mnist_cnn_2layer_5_3`` (baselines.md §3).

Both take flat inputs (B, in_dim) and images (B, 1, 28, 28) alike. For the curvature code every model exposes
:meth:`ops`, its affine layers as :class:`AffineOp` objects acting on flat vectors (a convolution is a linear map;
Lemma 1's extension to CNNs, paper.md §1.3).

Checkpoints (:func:`save`/:func:`load`) are one ``torch.save`` file holding plain data only (architecture dict,
state dict, metadata), so ``torch.load(weights_only=True)`` reads them and a downloaded file cannot run code.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import activations
from .errors import SorobustError

CHECKPOINT_FORMAT = "sorobust-checkpoint/1"


class AffineOp:
    """The linear part of one affine layer, acting on flat vectors.

    ``apply(x)`` maps (..., in_dim) → (..., out_dim) without the bias, ``adjoint(y)`` is its transpose, ``bias``
    is the (out_dim,) bias and :meth:`dense` the (out_dim, in_dim) matrix. Gradients flow to the layer weights.
    """

    def __init__(self, module: nn.Module, in_shape: tuple | None = None):
        self.module = module
        if isinstance(module, nn.Linear):
            self.in_dim, self.out_dim = module.in_features, module.out_features
            self.in_shape = (self.in_dim,)
            self.out_shape = (self.out_dim,)
        elif isinstance(module, nn.Conv2d):
            c, h, w = in_shape
            k, s = module.kernel_size, module.stride
            oh, ow = (h - k[0]) // s[0] + 1, (w - k[1]) // s[1] + 1
            self.in_shape = (c, h, w)
            self.out_shape = (module.out_channels, oh, ow)
            self.in_dim, self.out_dim = math.prod(self.in_shape), math.prod(self.out_shape)
        else:  # pragma: no cover - internal misuse
            raise TypeError(f"unsupported layer {type(module).__name__}")

    @property
    def bias(self) -> torch.Tensor:
        b = self.module.bias
        if isinstance(self.module, nn.Conv2d):
            b = b[:, None, None].expand(self.out_shape).reshape(-1)
        return b

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        if isinstance(self.module, nn.Linear):
            return x @ self.module.weight.T
        lead = x.shape[:-1]
        y = F.conv2d(x.reshape(-1, *self.in_shape), self.module.weight, stride=self.module.stride)
        return y.reshape(*lead, self.out_dim)

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        if isinstance(self.module, nn.Linear):
            return y @ self.module.weight
        lead = y.shape[:-1]
        x = F.conv_transpose2d(y.reshape(-1, *self.out_shape), self.module.weight, stride=self.module.stride)
        # conv_transpose may produce a smaller map when (h - k) % s != 0; pad back to the input shape
        ph, pw = self.in_shape[1] - x.shape[-2], self.in_shape[2] - x.shape[-1]
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph))
        return x.reshape(*lead, self.in_dim)

    def dense(self) -> torch.Tensor:
        """The layer's matrix (out_dim, in_dim); for a convolution, its unrolled (Toeplitz) matrix."""
        if isinstance(self.module, nn.Linear):
            return self.module.weight
        w = self.module.weight
        eye = torch.eye(self.in_dim, dtype=w.dtype, device=w.device)
        return self.apply(eye).T


class MLP(nn.Module):
    """Fully connected net in_dim-width^(depth-1)-n_classes with activation σ after every hidden layer."""

    kind = "mlp"

    def __init__(self, depth: int = 2, width: int = 1024, activation: str = "softplus", in_dim: int = 784,
                 n_classes: int = 10):
        super().__init__()
        if int(depth) < 2:
            raise SorobustError(f"an MLP needs depth >= 2 (got {depth}): depth counts the linear layers")
        self.depth, self.width, self.in_dim, self.n_classes = int(depth), int(width), int(in_dim), int(n_classes)
        self.activation_name = activation
        self.activation = activations.get(activation)
        dims = [self.in_dim] + [self.width] * (self.depth - 1) + [self.n_classes]
        for i in range(self.depth):
            self.add_module(f"fc{i + 1}", nn.Linear(dims[i], dims[i + 1]))

    @property
    def arch(self) -> dict:
        return {"kind": "mlp", "depth": self.depth, "width": self.width, "activation": self.activation_name,
                "in_dim": self.in_dim, "n_classes": self.n_classes}

    def layers(self) -> list[nn.Linear]:
        return [getattr(self, f"fc{i + 1}") for i in range(self.depth)]

    def ops(self) -> list[AffineOp]:
        return [AffineOp(m) for m in self.layers()]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        layers = self.layers()
        for layer in layers[:-1]:
            x = self.activation.fn(layer(x))
        return layers[-1](x)


class ConvNet(nn.Module):
    """conv(in_channels→channels, kernel, stride, valid padding) → σ → linear(hidden → n_classes)."""

    kind = "cnn"

    def __init__(self, channels: int = 5, kernel: int = 3, stride: int = 1, activation: str = "tanh",
                 in_shape: tuple = (1, 28, 28), n_classes: int = 10):
        super().__init__()
        self.channels, self.kernel, self.stride = int(channels), int(kernel), int(stride)
        self.in_shape, self.n_classes = tuple(int(s) for s in in_shape), int(n_classes)
        self.in_dim = math.prod(self.in_shape)
        self.activation_name = activation
        self.activation = activations.get(activation)
        self.conv1 = nn.Conv2d(self.in_shape[0], self.channels, self.kernel, stride=self.stride)
        self._op1 = AffineOp(self.conv1, self.in_shape)
        self.fc2 = nn.Linear(self._op1.out_dim, self.n_classes)
        self.depth = 2

    @property
    def arch(self) -> dict:
        return {"kind": "cnn", "channels": self.channels, "kernel": self.kernel, "stride": self.stride,
                "activation": self.activation_name, "in_shape": list(self.in_shape), "n_classes": self.n_classes}

    def ops(self) -> list[AffineOp]:
        return [AffineOp(self.conv1, self.in_shape), AffineOp(self.fc2)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(x.shape[0], *self.in_shape)
        a = self.activation.fn(self.conv1(x))
        return self.fc2(a.reshape(a.shape[0], -1))


def mlp(depth: int = 2, width: int = 1024, activation: str = "softplus", in_dim: int = 784,
        n_classes: int = 10) -> MLP:
    """The paper's MLP: ``depth`` linear layers, in_dim-width^(depth-1)-n_classes (paper.md §3)."""
    return MLP(depth, width, activation, in_dim, n_classes)


def cnn(channels: int = 5, kernel: int = 3, stride: int = 1, activation: str = "tanh",
        in_shape: tuple = (1, 28, 28), n_classes: int = 10) -> ConvNet:
    """The single-hidden-layer conv net (paper.md §3.5); defaults follow CNN-Cert's 5-filter 3×3 net."""
    return ConvNet(channels, kernel, stride, activation, in_shape, n_classes)


_SPEC_MLP = re.compile(r"^mlp-(\d+)x(\d+)-([a-z]+)$")
_SPEC_CNN = re.compile(r"^cnn-(\d+)c(\d+)k(\d+)s-([a-z]+)$")


def spec(arch: dict) -> str:
    """Short name of an architecture, used in result paths: ``mlp-2x1024-softplus``, ``cnn-5c3k1s-tanh``."""
    if arch["kind"] == "mlp":
        return f"mlp-{arch['depth']}x{arch['width']}-{arch['activation']}"
    return f"cnn-{arch['channels']}c{arch['kernel']}k{arch['stride']}s-{arch['activation']}"


def parse_spec(text: str) -> dict:
    """Inverse of :func:`spec` (MNIST input shape and 10 classes)."""
    m = _SPEC_MLP.match(text)
    if m:
        return {"kind": "mlp", "depth": int(m[1]), "width": int(m[2]), "activation": m[3], "in_dim": 784,
                "n_classes": 10}
    m = _SPEC_CNN.match(text)
    if m:
        return {"kind": "cnn", "channels": int(m[1]), "kernel": int(m[2]), "stride": int(m[3]),
                "activation": m[4], "in_shape": [1, 28, 28], "n_classes": 10}
    raise SorobustError(f"cannot parse architecture '{text}'; expected e.g. mlp-2x1024-softplus or cnn-5c3k1s-tanh")


def build(arch: dict | str) -> nn.Module:
    """A freshly initialised model of architecture ``arch`` (a dict as in ``model.arch`` or a spec string)."""
    if isinstance(arch, str):
        arch = parse_spec(arch)
    arch = dict(arch)
    kind = arch.pop("kind", None)
    try:
        if kind == "mlp":
            return MLP(**arch)
        if kind == "cnn":
            if "in_shape" in arch:
                arch["in_shape"] = tuple(arch["in_shape"])
            return ConvNet(**arch)
    except TypeError as e:
        raise SorobustError(f"bad architecture description {arch}: {e}") from None
    raise SorobustError(f"unknown architecture kind '{kind}'; expected 'mlp' or 'cnn'")


def check_finite(model: nn.Module, where: str = "model") -> None:
    """Stop with a one-line error if any parameter holds NaN or infinity."""
    for name, p in model.named_parameters():
        if not torch.isfinite(p).all():
            raise SorobustError(f"{where}: parameter '{name}' holds NaN or infinite values; "
                                f"the checkpoint is corrupt or training diverged, retrain or pick another file")


def save(model: nn.Module, path: str | Path, train_state: dict | None = None, **meta) -> Path:
    """Write ``model`` (architecture, weights, metadata) to ``path`` atomically.

    ``meta`` must hold plain data (str, int, float, bool, None, lists and dicts of them), as
    ``torch.load(weights_only=True)`` accepts nothing else. ``train_state`` (optimiser state, last-epoch weights,
    RNG state, …: tensors and plain data) lets training resume; :func:`load` ignores it.
    """
    from .artifacts import atomic_write

    path = Path(path)
    payload = {
        "format": CHECKPOINT_FORMAT,
        "arch": model.arch,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "meta": meta,
    }
    if train_state is not None:
        payload["train_state"] = train_state
    with atomic_write(path, mode="wb") as fh:
        torch.save(payload, fh)
    return path


def load_train_state(path: str | Path, map_location="cpu") -> dict | None:
    """The ``train_state`` stored by :func:`save` (None if the file has none)."""
    obj = torch.load(path, map_location=map_location, weights_only=True)
    return obj.get("train_state") if isinstance(obj, dict) else None


def load(path: str | Path, arch: dict | str | None = None, map_location="cpu") -> nn.Module:
    """Load a checkpoint written by :func:`save`, or a plain state dict of the reference code.

    A reference-code file (keys ``fc1.weight`` … ``fcL.bias``) holds no architecture: pass ``arch`` (e.g.
    ``"mlp-2x1024-softplus"``). If ``arch`` is given for a sorobust checkpoint, it must match the stored one.
    Loading uses ``weights_only=True``. The returned model is in eval mode; ``model.meta`` holds the metadata.
    """
    path = Path(path)
    if not path.is_file():
        raise SorobustError(f"checkpoint '{path}' does not exist; train one first or check the path")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # unpickling refused or not a torch file
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise SorobustError(f"cannot read checkpoint '{path}' as plain tensors (weights_only=True): {first}") from None
    want = parse_spec(arch) if isinstance(arch, str) else arch
    meta: dict = {}
    if isinstance(obj, dict) and obj.get("format") == CHECKPOINT_FORMAT:
        stored = obj["arch"]
        if want is not None and spec(want) != spec(stored):
            raise SorobustError(f"checkpoint '{path}' holds a {spec(stored)} but {spec(want)} was asked for; "
                                f"drop the architecture option or pick the matching checkpoint")
        want, state, meta = stored, obj["state_dict"], obj.get("meta", {})
    elif isinstance(obj, dict) and all(isinstance(v, torch.Tensor) for v in obj.values()):
        if want is None:
            raise SorobustError(f"'{path}' is a plain state dict without an architecture; pass the architecture "
                                f"(e.g. --arch mlp-2x1024-softplus)")
        state = obj
    else:
        raise SorobustError(f"'{path}' is neither a sorobust checkpoint nor a state dict")
    model = build(want)
    expected = model.state_dict()
    if set(state) != set(expected) or any(tuple(state[k].shape) != tuple(expected[k].shape) for k in expected):
        got = ", ".join(f"{k}{tuple(v.shape)}" for k, v in state.items())
        raise SorobustError(f"checkpoint '{path}' does not fit architecture {spec(want)} (it holds {got}); "
                            f"pass the architecture it was trained with")
    model.load_state_dict(state)
    check_finite(model, where=f"checkpoint '{path}'")
    model.meta = meta
    return model.eval()
