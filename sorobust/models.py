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

Architectures and checkpoints are validated before any model is allocated (:func:`check_arch`): every
architecture (spec string, dict, or the ``arch`` field of a checkpoint) must have a known kind and activation,
exactly the keys of its kind, integer sizes within bounds (:data:`MAX_DEPTH`, :data:`MAX_DIM`) and at most
:data:`MAX_PARAMS` parameters, counted arithmetically from the shapes it implies (:func:`param_shapes`). A
checkpoint's state dict must hold exactly those names and shapes, as finite floating-point tensors, before the
model is built; so a junk ``width = 2e9`` or a state dict of another size is refused with one line, not an
out-of-memory crash or a traceback.
"""

from __future__ import annotations

import math
import numbers
import re
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import activations
from .errors import SorobustError

CHECKPOINT_FORMAT = "sorobust-checkpoint/1"

#: Largest accepted MLP depth (linear layers); the paper's nets have 2 to 5.
MAX_DEPTH = 64
#: Largest accepted single size (width, channels, kernel, stride, input size, classes).
MAX_DIM = 1 << 20
#: Largest accepted parameter count (2^28 ≈ 2.7e8, 1 GiB in float32); the paper's largest net has ~4e6.
MAX_PARAMS = 1 << 28

#: Per kind: the required keys (besides ``kind``) and the optional ones with their defaults (MNIST input).
_ARCH_KEYS = {
    "mlp": (("depth", "width", "activation"), {"in_dim": 784, "n_classes": 10}),
    "cnn": (("channels", "kernel", "stride", "activation"), {"in_shape": [1, 28, 28], "n_classes": 10}),
}
_SPEC_HELP = "expected e.g. mlp-2x1024-softplus or cnn-5c3k1s-tanh"
_CKPT_FIX = "the file is corrupt or was not written by sorobust: retrain it or pick another checkpoint"


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


def _short(value, limit: int = 60) -> str:
    """``repr(value)`` cut to ``limit`` characters, for quoting junk in a one-line error."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def param_shapes(arch: dict) -> dict[str, tuple]:
    """Name → shape of every state-dict entry of ``build(arch)``, computed arithmetically (nothing allocated).

    ``arch`` must be valid (the output of :func:`check_arch` or :func:`parse_spec`).
    """
    n = arch.get("n_classes", 10)
    if arch["kind"] == "mlp":
        dims = [arch.get("in_dim", 784)] + [arch["width"]] * (arch["depth"] - 1) + [n]
        shapes = {}
        for i in range(arch["depth"]):
            shapes[f"fc{i + 1}.weight"] = (dims[i + 1], dims[i])
            shapes[f"fc{i + 1}.bias"] = (dims[i + 1],)
        return shapes
    c, h, w = arch.get("in_shape", (1, 28, 28))
    ch, k, st = arch["channels"], arch["kernel"], arch["stride"]
    hidden = ch * ((h - k) // st + 1) * ((w - k) // st + 1)
    return {"conv1.weight": (ch, c, k, k), "conv1.bias": (ch,), "fc2.weight": (n, hidden), "fc2.bias": (n,)}


def check_arch(arch, where: str = "architecture", fix: str = _SPEC_HELP) -> dict:
    """Validate an architecture description without building anything; return it normalised.

    Args:
        arch: A dict as in ``model.arch`` (optional keys ``in_dim``/``in_shape`` and ``n_classes`` default to
            MNIST's 784 / [1, 28, 28] and 10).
        where: What is described, for the message (e.g. ``"checkpoint 'm.pt': stored architecture"``).
        fix: How to fix it, appended to the message.

    Returns:
        A new dict with every key of its kind, in ``model.arch`` order, sizes as ``int``, ``in_shape`` a list.

    Raises:
        SorobustError: One line: not a dict, unknown kind, missing or unknown keys, unknown activation, a size
            that is not an integer (``2e9``, ``"16"``, ``True``) or out of bounds (:data:`MAX_DEPTH`,
            :data:`MAX_DIM`, a kernel larger than the input), or more than :data:`MAX_PARAMS` parameters.
    """
    if not isinstance(arch, dict):
        raise SorobustError(f"{where}: expected an architecture dict, got {type(arch).__name__} {_short(arch)}; "
                            f"{fix}")
    kind = arch.get("kind")
    if not isinstance(kind, str) or kind not in _ARCH_KEYS:
        raise SorobustError(f"{where}: unknown architecture kind {_short(kind)}, expected 'mlp' or 'cnn'; {fix}")
    required, optional = _ARCH_KEYS[kind]
    valid = ("kind", *required, *optional)
    unknown = [_short(k, 30) for k in arch if k not in valid]
    if unknown:
        raise SorobustError(f"{where}: unknown key(s) {', '.join(unknown)} in a {kind} architecture (valid keys: "
                            f"{', '.join(valid)}); {fix}")
    missing = [k for k in required if k not in arch]
    if missing:
        raise SorobustError(f"{where}: {kind} architecture lacks {', '.join(missing)}; {fix}")
    act = arch["activation"]
    if not isinstance(act, str) or act not in activations.ACTIVATIONS:
        raise SorobustError(f"{where}: unknown activation {_short(act)}, choose one of "
                            f"{', '.join(activations.ACTIVATIONS)}; {fix}")

    def size(name, value, low, high=MAX_DIM):
        """``value`` as an int, refused unless it is an integer (not a bool) in [low, high]."""
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise SorobustError(f"{where}: {name} {_short(value)} is not an integer; {fix}")
        if not low <= int(value) <= high:
            raise SorobustError(f"{where}: {name} {int(value)} is out of range (must be {low} to {high}); {fix}")
        return int(value)

    get = {**optional, **arch}.get
    if kind == "mlp":
        out = {"kind": kind, "depth": size("depth (number of linear layers)", get("depth"), 2, MAX_DEPTH),
               "width": size("width", get("width"), 1), "activation": act, "in_dim": size("in_dim", get("in_dim"), 1),
               "n_classes": size("n_classes", get("n_classes"), 2)}
    else:
        shape = get("in_shape")
        if not isinstance(shape, (list, tuple)) or len(shape) != 3:
            raise SorobustError(f"{where}: in_shape {_short(shape)} must be [channels, height, width]; {fix}")
        shape = [size("in_shape entry", v, 1) for v in shape]
        out = {"kind": kind, "channels": size("channels", get("channels"), 1),
               "kernel": size("kernel", get("kernel"), 1), "stride": size("stride", get("stride"), 1),
               "activation": act, "in_shape": shape, "n_classes": size("n_classes", get("n_classes"), 2)}
        if out["kernel"] > min(shape[1:]):
            raise SorobustError(f"{where}: kernel {out['kernel']} is larger than the {shape[1]}x{shape[2]} input; "
                                f"{fix}")
    n_params = sum(math.prod(s) for s in param_shapes(out).values())
    if n_params > MAX_PARAMS:
        raise SorobustError(f"{where}: {spec(out)} would have {n_params:.3g} parameters, more than the limit "
                            f"{MAX_PARAMS:.3g} (sorobust.models.MAX_PARAMS); {fix}")
    return out


def parse_spec(text: str) -> dict:
    """Inverse of :func:`spec` (MNIST input shape and 10 classes), validated by :func:`check_arch`."""
    if not isinstance(text, str):
        raise SorobustError(f"architecture {_short(text)} is not a string; {_SPEC_HELP}")
    where = f"architecture '{text}'"
    m = _SPEC_MLP.match(text)
    if m:
        arch = {"kind": "mlp", "depth": m[1], "width": m[2], "activation": m[3], "in_dim": 784, "n_classes": 10}
    else:
        m = _SPEC_CNN.match(text)
        if not m:
            raise SorobustError(f"cannot parse {where}; {_SPEC_HELP}")
        arch = {"kind": "cnn", "channels": m[1], "kernel": m[2], "stride": m[3], "activation": m[4],
                "in_shape": [1, 28, 28], "n_classes": 10}
    for k, v in arch.items():
        if isinstance(v, str) and v.isdigit():  # the numbers of the spec
            if len(v) > 18:  # int() of thousands of digits is slow, and refused past 4300
                raise SorobustError(f"{where}: {k} {v[:10]}... ({len(v)} digits) is out of range; {_SPEC_HELP}")
            arch[k] = int(v)
    return check_arch(arch, where=where, fix=_SPEC_HELP)


def build(arch: dict | str) -> nn.Module:
    """A freshly initialised model of architecture ``arch`` (a dict as in ``model.arch`` or a spec string).

    The description is validated first (:func:`check_arch`), so a bad one is refused before any allocation.
    """
    arch = parse_spec(arch) if isinstance(arch, str) else check_arch(arch)
    kwargs = dict(arch)
    if kwargs.pop("kind") == "mlp":
        return MLP(**kwargs)
    kwargs["in_shape"] = tuple(kwargs["in_shape"])
    return ConvNet(**kwargs)


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


def _read(path: str | Path, map_location, fix: str):
    """``torch.load(path, weights_only=True)``, with a one-line error (ending in ``fix``) for each way it fails.

    A missing file, a file that is not a torch checkpoint (or is truncated or corrupt), and one holding objects
    other than tensors and plain data (refused by the safe unpickler, nothing of it is run) are told apart.
    """
    path = Path(path)
    if path.is_dir():
        raise SorobustError(f"checkpoint '{path}' is a directory, not a file; give the path of the checkpoint file")
    if not path.is_file():
        raise SorobustError(f"checkpoint '{path}' does not exist; train one first or check the path")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        text = str(e)
        unsafe = re.search(r"Unsupported global: (?:GLOBAL )?(\S+)", text)
        if unsafe:
            raise SorobustError(f"checkpoint '{path}' holds objects other than tensors and plain data "
                                f"({unsafe[1]}); it was not unpickled, as that could run code from the file: use a "
                                f"checkpoint written by sorobust or a plain state dict") from None
        detail = re.search(r"WeightsUnpickler error:\s*(\S[^\n]*)", text)
        lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
        first = detail[1].strip() if detail else (lines[0] if lines else "")
        first = f"{type(e).__name__}: {first}" if first else type(e).__name__
        first = first if len(first) <= 120 else first[:117] + "..."
        raise SorobustError(f"cannot read checkpoint '{path}' ({path.stat().st_size} bytes) as plain tensors "
                            f"(weights_only=True): it is not a torch checkpoint, or it is truncated or corrupt "
                            f"({first}); {fix}") from None


def _check_state(state, arch: dict, where: str, fix: str) -> None:
    """Check a state dict against ``arch`` before any model is built.

    Exactly the names and shapes of :func:`param_shapes` (compared arithmetically), dense floating-point
    tensors, all finite. Raises a one-line SorobustError naming the first problem(s), ending in ``fix``.
    """
    if not isinstance(state, dict):
        raise SorobustError(f"{where}: state_dict is a {type(state).__name__}, not a dict of tensors; {fix}")
    for k, v in state.items():
        if not isinstance(v, torch.Tensor):
            raise SorobustError(f"{where}: state_dict entry {_short(k, 40)} is a {type(v).__name__}, not a tensor; "
                                f"{fix}")
    expected = param_shapes(arch)

    def first(items, n=3):
        """The first ``n`` of ``items`` joined, and how many more there are."""
        return ", ".join(items[:n]) + (f" and {len(items) - n} more" if len(items) > n else "")

    problems = []
    missing = [k for k in expected if k not in state]
    extra = [_short(k, 40) for k in state if k not in expected]
    wrong = [f"{k} {tuple(state[k].shape)} (expected {expected[k]})" for k in expected
             if k in state and tuple(state[k].shape) != expected[k]]
    if missing:
        problems.append(f"missing {first(missing)}")
    if extra:
        problems.append(f"unexpected {first(extra)}")
    if wrong:
        problems.append(f"wrong shape {first(wrong)}")
    if problems:
        raise SorobustError(f"{where} does not fit architecture {spec(arch)}: {'; '.join(problems)}; {fix}")
    for k, v in state.items():
        if v.layout != torch.strided or not v.is_floating_point():
            raise SorobustError(f"{where}: parameter '{k}' is a {v.layout} {v.dtype} tensor, expected dense "
                                f"floating point; {fix}")
        if not torch.isfinite(v).all():
            raise SorobustError(f"{where}: parameter '{k}' holds NaN or infinite values; "
                                f"the checkpoint is corrupt or training diverged, retrain or pick another file")


def load_train_state(path: str | Path, map_location="cpu") -> dict | None:
    """The ``train_state`` stored by :func:`save` (None if the file has none).

    Read with ``weights_only=True``. For a sorobust checkpoint the stored architecture is validated and the
    weights kept in the train state (``last_state_dict``, ``best["state_dict"]``) are checked against it, as in
    :func:`load`.

    Raises:
        SorobustError: One line (ending in "delete it to train from scratch") if the file cannot be read, or its
            architecture, train state or weights are malformed.
    """
    fix = "delete it to train from scratch"
    obj = _read(path, map_location, fix)
    if not isinstance(obj, dict) or obj.get("train_state") is None:
        return None
    where = f"checkpoint '{path}'"
    state = obj["train_state"]
    if not isinstance(state, dict):
        raise SorobustError(f"{where}: train_state is a {type(state).__name__}, not a dict; {fix}")
    if obj.get("format") == CHECKPOINT_FORMAT and "arch" in obj:
        arch = check_arch(obj["arch"], where=f"{where}: stored architecture", fix=fix)
        best = state.get("best")
        for name, sd in (("last_state_dict", state.get("last_state_dict")),
                         ("best state_dict", best.get("state_dict") if isinstance(best, dict) else None)):
            if sd is not None:
                _check_state(sd, arch, f"{where} ({name} of its train state)", fix)
    return state


def load(path: str | Path, arch: dict | str | None = None, map_location="cpu") -> nn.Module:
    """Load a checkpoint written by :func:`save`, or a plain state dict of the reference code.

    A reference-code file (keys ``fc1.weight`` … ``fcL.bias``) holds no architecture: pass ``arch`` (e.g.
    ``"mlp-2x1024-softplus"``). If ``arch`` is given for a sorobust checkpoint, it must match the stored one.
    Loading uses ``weights_only=True``. The returned model is in eval mode; ``model.meta`` holds the metadata.

    Everything is checked before the model is allocated: the stored (and the requested) architecture by
    :func:`check_arch`, the presence of ``state_dict``, its names and shapes against :func:`param_shapes`, its
    dtypes and finiteness, and ``meta`` being a dict.

    Raises:
        SorobustError: One line saying what is wrong and how to fix it, for a missing, unreadable, truncated or
            unsafe file, a junk architecture, a missing or mismatching state dict, NaN/inf weights, or a
            checkpoint of another architecture than ``arch``.
    """
    path = Path(path)
    want = None
    if arch is not None:
        want = parse_spec(arch) if isinstance(arch, str) else check_arch(arch, "the architecture asked for")
    obj = _read(path, map_location, "copy it again or retrain it")
    where = f"checkpoint '{path}'"
    meta: dict = {}
    fmt = obj.get("format") if isinstance(obj, dict) else None
    if fmt == CHECKPOINT_FORMAT:
        if "arch" not in obj:
            raise SorobustError(f"{where} has no 'arch' entry; {_CKPT_FIX}")
        stored = check_arch(obj["arch"], where=f"{where}: stored architecture", fix=_CKPT_FIX)
        if want is not None and spec(want) != spec(stored):
            raise SorobustError(f"{where} holds a {spec(stored)} but {spec(want)} was asked for; "
                                f"drop the architecture option or pick the matching checkpoint")
        if "state_dict" not in obj:
            raise SorobustError(f"{where} has no state_dict (its weights); {_CKPT_FIX}")
        meta = obj.get("meta", {})
        if not isinstance(meta, dict):
            raise SorobustError(f"{where}: meta is a {type(meta).__name__}, not a dict; {_CKPT_FIX}")
        want, state, fix = stored, obj["state_dict"], _CKPT_FIX
    elif isinstance(fmt, str) and fmt.startswith("sorobust-checkpoint/"):
        raise SorobustError(f"{where} has format {_short(fmt)}, but this sorobust reads {CHECKPOINT_FORMAT}; use the "
                            f"sorobust version that wrote it, or retrain")
    elif isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        if want is None:
            raise SorobustError(f"'{path}' is a plain state dict without an architecture; pass the architecture "
                                f"(e.g. --arch mlp-2x1024-softplus)")
        state, fix = obj, "pass the architecture it was trained with"
    else:
        what = f"a dict with keys {_short(list(obj)[:5])}" if isinstance(obj, dict) else f"a {type(obj).__name__}"
        raise SorobustError(f"'{path}' is neither a sorobust checkpoint nor a state dict (it holds {what}); pass a "
                            f"checkpoint written by sorobust train or a reference-code state dict")
    _check_state(state, want, where, fix)
    model = build(want)
    model.load_state_dict(state)
    check_finite(model, where=where)  # again after the cast to the model's dtype (1e300 overflows float32)
    model.meta = meta
    return model.eval()
