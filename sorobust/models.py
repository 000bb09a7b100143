"""Architectures of the paper and checkpoint I/O.

* :func:`mlp` builds the paper's fully connected nets 784-1024^(L-1)-10 (``Net(num_layers)`` of the reference
  code ``singlasahil14/so-robust``; paper.md §3) for any depth L ≥ 2. Layers are named ``fc1 … fcL`` so that a
  state dict saved by the reference code loads as is.
* :func:`cnn` builds the single-hidden-layer convolutional net of the paper's CNN table (paper.md §3.5):
  conv (valid padding) → σ → linear. The paper does not give its size; the default, 5 filters of 3×3 with
  stride 1 (hidden width 5·26·26 = 3380), is CNN-Cert's ``mnist_cnn_2layer_5_3`` (baselines.md §3).

Both take flat inputs (B, in_dim) and images (B, 1, 28, 28) alike.

**Any smooth feed-forward network** (issue 12). The numerical code (``curvature``, ``certify.crc``,
``certify.crown``, ``attacks``) reads every network through one adapter, :func:`as_network`, which turns a layer
sequence into a :class:`Network`: its affine layers as :class:`AffineOp` objects acting on flat vectors (a
convolution, with any zero padding, stride, dilation and groups, is a linear map: Lemma 1's extension to CNNs,
paper.md §1.3), and one activation σ with its constants (:mod:`sorobust.activations`). It reads an
``nn.Sequential`` of Linear / Conv2d / Flatten / Unflatten and Sigmoid, Tanh or Softplus (any β; ReLU for the CROWN
family only), with any widths; a module whose forward is such a chain (read by torch.fx and checked against the
module's output); and the package's own :class:`MLP` and :class:`ConvNet`, which are ordinary instances of the same
path (their :meth:`MLP.layer_sequence`; their :meth:`~MLP.ops` are the adapter's). What cannot be certified is
refused with one line naming the layer (position and type) and why: normalisation, pooling, dropout in train mode,
other activations, a different activation per layer, residual connections and branches, and torch's Softplus with a
finite threshold (it switches to the identity above it, a jump no curvature bound covers) unless the smooth softplus
is asked for in its place (``as_network(module, softplus_threshold="ignore")``).

Checkpoints (:func:`save`/:func:`load`) are one ``torch.save`` file holding plain data only (architecture dict,
state dict, metadata), so ``torch.load(weights_only=True)`` reads them and a downloaded file cannot run code.
``load(path, module=m)`` loads a plain state dict (or a checkpoint's weights) into a user's module instead, after
comparing names and shapes with ``m.state_dict()`` and saying in one line what is missing, unexpected or of another
shape and what to do (strip a prefix, load by position, build the module the file was saved from).

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
import torch.fx
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


def _conv_padding(module: nn.Conv2d) -> tuple[int, int]:
    """The Conv2d's zero padding as (top/bottom, left/right) ints: ``"valid"`` is 0, ``"same"`` d(k − 1)/2 per side
    (torch pads ``"same"`` asymmetrically when d(k − 1) is odd, which :func:`as_network` refuses)."""
    p = module.padding
    if p == "valid":
        return 0, 0
    if p == "same":
        return tuple(d * (k - 1) // 2 for d, k in zip(module.dilation, module.kernel_size))
    return int(p[0]), int(p[1])


class AffineOp:
    """The linear part of one affine layer, acting on flat vectors.

    ``apply(x)`` maps (..., in_dim) → (..., out_dim) without the bias, ``adjoint(y)`` is its transpose, ``bias``
    is the (out_dim,) bias (zeros for a layer without one) and :meth:`dense` the (out_dim, in_dim) matrix.
    Gradients flow to the layer weights. A ``Conv2d`` (zero padding, any stride, dilation and groups) is a linear
    map of its flattened input (Lemma 1's extension to CNNs, paper.md §1.3): ``apply`` is ``F.conv2d``, ``adjoint``
    ``F.conv_transpose2d`` (same stride, dilation and groups) on the zero-padded input, zero-filled where its last
    rows/columns reach no output, with the padding's rows then dropped.
    """

    def __init__(self, module: nn.Module, in_shape: tuple | None = None):
        self.module = module
        if isinstance(module, nn.Linear):
            self.in_dim, self.out_dim = module.in_features, module.out_features
            self.in_shape = (self.in_dim,)
            self.out_shape = (self.out_dim,)
        elif isinstance(module, nn.Conv2d):
            c, h, w = in_shape
            k, s, d = module.kernel_size, module.stride, module.dilation
            self.padding = _conv_padding(module)
            p = self.padding
            oh = (h + 2 * p[0] - d[0] * (k[0] - 1) - 1) // s[0] + 1
            ow = (w + 2 * p[1] - d[1] * (k[1] - 1) - 1) // s[1] + 1
            self.in_shape = (c, h, w)
            self.out_shape = (module.out_channels, oh, ow)
            self.in_dim, self.out_dim = math.prod(self.in_shape), math.prod(self.out_shape)
        else:  # pragma: no cover - internal misuse
            raise TypeError(f"unsupported layer {type(module).__name__}")

    @property
    def bias(self) -> torch.Tensor:
        b = self.module.bias
        if b is None:
            w = self.module.weight
            return torch.zeros(self.out_dim, dtype=w.dtype, device=w.device)
        if isinstance(self.module, nn.Conv2d):
            b = b[:, None, None].expand(self.out_shape).reshape(-1)
        return b

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        if isinstance(self.module, nn.Linear):
            return x @ self.module.weight.T
        m = self.module
        lead = x.shape[:-1]
        y = F.conv2d(x.reshape(-1, *self.in_shape), m.weight, None, m.stride, self.padding, m.dilation, m.groups)
        return y.reshape(*lead, self.out_dim)

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        if isinstance(self.module, nn.Linear):
            return y @ self.module.weight
        m = self.module
        lead = y.shape[:-1]
        # the adjoint on the zero-padded input (h + 2p rows): the transposed convolution covers its first
        # (oh − 1)s + d(k − 1) + 1 rows; the rows after them reach no output (adjoint 0) when
        # (h + 2p − d(k − 1) − 1) % s != 0. Pad those back, then drop the padding's rows (p on each side).
        x = F.conv_transpose2d(y.reshape(-1, *self.out_shape), m.weight, None, m.stride, 0, 0, m.groups, m.dilation)
        (p0, p1), (h, w) = self.padding, self.in_shape[1:]
        ph, pw = h + 2 * p0 - x.shape[-2], w + 2 * p1 - x.shape[-1]
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph))
        if p0 or p1:
            x = x[..., p0:p0 + h, p1:p1 + w]
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

    def layer_sequence(self) -> list[tuple[str, nn.Module]]:
        """The net as the layer sequence :func:`as_network` reads: flatten, fc1, σ, fc2, …, σ, fcL."""
        seq: list[tuple[str, nn.Module]] = [("flatten", nn.Flatten())]
        for i, layer in enumerate(self.layers()):
            if i:
                seq.append((f"act{i}", activations.Layer(self.activation)))
            seq.append((f"fc{i + 1}", layer))
        return seq

    def ops(self) -> list[AffineOp]:
        """The affine layers, read through :func:`as_network` like any user network."""
        return as_network(self).ops()

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

    def layer_sequence(self) -> list[tuple[str, nn.Module]]:
        """The net as the layer sequence :func:`as_network` reads (input shape ``in_shape``): conv1, σ, flatten,
        fc2."""
        return [("conv1", self.conv1), ("act1", activations.Layer(self.activation)), ("flatten", nn.Flatten()),
                ("fc2", self.fc2)]

    def ops(self) -> list[AffineOp]:
        """The affine layers, read through :func:`as_network` like any user network."""
        return as_network(self).ops()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(x.shape[0], *self.in_shape)
        a = self.activation.fn(self.conv1(x))
        return self.fc2(a.reshape(a.shape[0], -1))


# ----------------------------------------------------------------------------------------------------------------
# any smooth feed-forward network: the layer-sequence view
# ----------------------------------------------------------------------------------------------------------------

#: What a network may be built from (for the messages).
SUPPORTED_LAYERS = ("Linear, Conv2d (zero padding, any stride, dilation, groups), Flatten, Unflatten, Sigmoid, Tanh, "
                    "Softplus (ReLU for the CROWN family), Identity, Dropout in eval mode")
_FIX_SEQUENTIAL = f"build the network as an nn.Sequential of {SUPPORTED_LAYERS}"
_TORCH_ACTIVATIONS = {nn.Sigmoid: "sigmoid", nn.Tanh: "tanh", nn.ReLU: "relu"}
_OTHER_ACTIVATIONS = (nn.LeakyReLU, nn.PReLU, nn.ReLU6, nn.RReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish,
                      nn.Hardtanh, nn.Hardsigmoid, nn.Hardswish, nn.Softsign, nn.LogSigmoid, nn.Tanhshrink,
                      nn.Softshrink, nn.Hardshrink, nn.Threshold)
SOFTPLUS_THRESHOLD = ("refuse", "ignore")


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else str(name)


def _layer_name(name: str, m: nn.Module) -> str:
    """``layer NAME (TYPE)`` for the messages: NAME is the position in the Sequential (``2``, ``1.0``) or the
    attribute path, TYPE the class (with a Softplus's beta and threshold)."""
    if isinstance(m, nn.Softplus):
        kind = f"Softplus(beta={m.beta:g}, threshold={m.threshold:g})"
    elif isinstance(m, activations.Layer):
        kind = f"sorobust {m.act.label}"
    else:
        kind = type(m).__name__
    return f"layer {name} ({kind})"


def _activation_of(m: nn.Module, where: str, softplus_threshold: str):
    """The :class:`~sorobust.activations.Activation` that ``m`` computes, None if ``m`` is no activation; a one-line
    error for an activation sorobust has no constants for, and for a Softplus it cannot honour."""
    if isinstance(m, activations.Layer):
        return m.act
    for cls, name in _TORCH_ACTIVATIONS.items():
        if isinstance(m, cls):
            return activations.get(name)
    if isinstance(m, nn.Softplus):
        beta, thr = float(m.beta), float(m.threshold)
        if not (math.isfinite(beta) and beta > 0):
            raise SorobustError(f"{where}: beta must be a positive finite number; softplus(βz)/β is the function "
                                f"sorobust bounds")
        if math.isfinite(thr) and softplus_threshold == "refuse":
            gap = math.log1p(math.exp(-min(thr, 700.0))) / beta
            raise SorobustError(
                f"{where}: torch's Softplus returns its input where beta·z > threshold, a jump of up to "
                f"log(1+e^-threshold)/beta = {gap:.2g} that no curvature bound covers, so a certificate would not be "
                f"sound for it; build the layer with threshold=math.inf (the exact softplus), or certify the smooth "
                f"softplus in its place with sorobust.models.as_network(module, softplus_threshold='ignore')")
        return activations.softplus(beta)
    if isinstance(m, _OTHER_ACTIVATIONS):
        raise SorobustError(f"{where}: sorobust has curvature constants and linear relaxations only for Sigmoid, "
                            f"Tanh and Softplus (and ReLU, for the CROWN family); use one of those")
    return None


def _refusal(m: nn.Module, where: str) -> SorobustError:
    """The one-line reason why the layer ``m`` cannot be part of a network sorobust certifies."""
    kind = type(m).__name__
    if "Norm" in kind:
        why = ("normalisation layers are not supported: in eval mode a BatchNorm is an affine map, fold it into the "
               "preceding Linear or Conv2d and remove it")
    elif "Pool" in kind:
        why = ("pooling is not supported (max pooling is not twice differentiable); use a strided Conv2d in its "
               "place")
    elif isinstance(m, (nn.Softmax, nn.LogSoftmax, nn.Softmin)):
        why = "sorobust certifies the logits: drop the final softmax (it does not change the predicted class)"
    elif "Conv" in kind:
        why = "only Conv2d convolutions are supported"
    else:
        why = (f"not a layer sorobust reads (it reads {SUPPORTED_LAYERS}; residual connections and branches are not "
               f"supported)")
    return SorobustError(f"{where}: {why}")


class _Tracer(torch.fx.Tracer):
    """torch.fx tracer keeping the package's own nets and activation layers whole (they are expanded by
    :meth:`layer_sequence`)."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, (MLP, ConvNet, Network, activations.Layer)) or super().is_leaf_module(m, qualname)


def _is_shape_query(node, shape_nodes: set) -> bool:
    """``x.size(…)``, ``x.shape``, ``x.shape[i]``: values of the batch's shape, not tensors of the network."""
    import operator

    if node.op == "call_method" and node.target in ("size", "dim"):
        return True
    if node.op == "call_function" and node.target is getattr and node.args[1:2] == ("shape",):
        return True
    return node.op == "call_function" and node.target is operator.getitem and node.args[0] in shape_nodes


def _function_layer(node, name: str, shape_nodes: set) -> nn.Module:
    """The layer a traced function or method call is: Flatten, Unflatten or an activation; a one-line error for
    anything else."""
    args, kw = node.args[1:], node.kwargs
    target = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", str(node.target))
    where = f"layer {name} ({target})"
    if target == "flatten":
        start = args[0] if args else kw.get("start_dim", 0)
        end = args[1] if len(args) > 1 else kw.get("end_dim", -1)
        if (start, end) == (1, -1):
            return nn.Flatten()
        raise SorobustError(f"{where}: only flattening dims 1 to -1 (keeping the batch) is supported")
    if target in ("view", "reshape"):
        shape = list(args[0]) if len(args) == 1 and isinstance(args[0], (tuple, list)) else list(args)
        batch = shape[:1] and (shape[0] in shape_nodes or shape[0] == -1)
        rest = shape[1:]
        if batch and len(rest) == 1 and isinstance(rest[0], int):
            return nn.Flatten()
        if batch and len(rest) == 3 and all(isinstance(v, int) and v > 0 for v in rest):
            return nn.Unflatten(1, tuple(rest))
        raise SorobustError(f"{where}: a {target} that is not (batch, -1) or (batch, C, H, W) is not supported")
    if target in ("tanh", "sigmoid", "relu"):
        return {"tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "relu": nn.ReLU}[target]()
    if target == "softplus":
        beta = args[0] if args else kw.get("beta", 1.0)
        threshold = args[1] if len(args) > 1 else kw.get("threshold", 20.0)
        return nn.Softplus(beta, threshold)
    raise SorobustError(f"{where}: not an operation sorobust reads (it reads {SUPPORTED_LAYERS}); {_FIX_SEQUENTIAL}")


def _traced(module: nn.Module, prefix: str, traced: list) -> list:
    """The layer sequence of a module that is not an nn.Sequential, read from its forward by torch.fx: it must be
    a chain, each layer applied to the previous one's output (a residual connection or a branch is refused)."""
    kind = type(module).__name__
    where = f"module {prefix or '(top)'} ({kind})"
    try:
        graph = _Tracer().trace(module)
    except Exception as e:  # data-dependent control flow, unsupported Python: not a plain layer sequence
        first = (str(e).strip().splitlines() or [""])[0][:100]
        raise SorobustError(f"cannot read a layer sequence from {where}: tracing its forward with torch.fx failed "
                            f"({type(e).__name__}: {first}); {_FIX_SEQUENTIAL}") from None
    cur, shape_nodes, out = None, set(), []
    for node in graph.nodes:
        if node.op == "placeholder":
            if cur is not None:
                raise SorobustError(f"{where}: its forward takes more than one input; sorobust certifies a network "
                                    f"of one input")
            cur = node
            continue
        if node.op == "output":
            if node.args[0] is not cur:
                raise SorobustError(f"{where}: its forward returns something other than its last layer's output; "
                                    f"{_FIX_SEQUENTIAL}")
            break
        ins = node.all_input_nodes
        if _is_shape_query(node, shape_nodes):
            shape_nodes.add(node)
            continue
        name = _join(prefix, node.target if node.op == "call_module" else node.name)
        tensors = [i for i in ins if i not in shape_nodes]
        if tensors != [cur]:
            target = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", node.target)
            raise SorobustError(f"layer {name} ({target}) of {where} combines tensors other than the previous layer's "
                                f"output alone (a residual connection or a branch); sorobust needs a plain layer "
                                f"sequence, each layer applied to the previous one's output")
        if node.op == "call_module":
            out.extend(_leaves(module.get_submodule(node.target), name, traced))
        elif node.op in ("call_function", "call_method"):
            out.append((name, _function_layer(node, name, shape_nodes)))
        else:  # get_attr: a parameter used directly in forward
            raise SorobustError(f"layer {name} of {where} uses the tensor {node.target} directly; put it in an "
                                f"nn.Linear or nn.Conv2d")
        cur = node
    return out


def _leaves(module: nn.Module, prefix: str, traced: list) -> list:
    """The (name, layer) sequence of ``module``: an nn.Sequential's children in order (nested ones expanded), the
    package's nets' :meth:`layer_sequence`, a single layer itself, and any other container read by torch.fx (then
    appended to ``traced``)."""
    if isinstance(module, nn.Sequential):
        return [leaf for name, child in module.named_children() for leaf in _leaves(child, _join(prefix, name), traced)]
    if isinstance(module, (MLP, ConvNet, Network)):
        return [leaf for name, child in module.layer_sequence() for leaf in _leaves(child, _join(prefix, name), traced)]
    if next(module.children(), None) is not None and not isinstance(module, (nn.Linear, nn.Conv2d)):
        traced.append(module)
        return _traced(module, prefix, traced)
    return [(prefix or "0", module)]


class Network(nn.Module):
    """One smooth feed-forward network as the curvature, CRC, attack and CROWN code reads it: affine layers
    (``Linear``, ``Conv2d``) with one activation σ between each two, on flat inputs.

    Built by :func:`as_network` from a layer sequence (name, module) — an ``nn.Sequential`` of
    :data:`SUPPORTED_LAYERS`, the package's :class:`MLP`/:class:`ConvNet`, or a module whose forward is such a chain.
    The network holds the very modules it was read from (so it shares their parameters: gradients flow to them, and
    training the source trains it). It exposes what the numerical code uses: :meth:`ops` (the affine layers as
    :class:`AffineOp`, paper.md §1.3 for convolutions), ``activation`` (σ with its constants), ``in_shape``,
    ``in_dim``, ``depth`` (affine layers), ``n_classes``, and a ``forward`` on flat or shaped inputs that computes
    exactly the function whose curvature is bounded: z^(k) = W^(k) a^(k−1) + b^(k), a^(k) = σ(z^(k)) (paper.md §1.1).

    Args:
        layers: (name, module) pairs in order.
        in_shape: the shape of one input, used when the first affine layer is a Conv2d (default: (C, 28, 28),
            MNIST's size, with C its in_channels; the first Linear after the convolutions checks it).
        softplus_threshold: ``"refuse"`` (default) a Softplus with a finite threshold (its jump to the identity is
            not smooth), or ``"ignore"`` it: certify the smooth softplus log(1+e^{βz})/β in its place.
        source: the module the sequence was read from (where a float64 copy is cached: ``crc._model64``).

    Raises:
        SorobustError: one line naming the first layer (position and type) that cannot be read and why.
    """

    kind = "network"

    def __init__(self, layers: list, in_shape: tuple | None = None, softplus_threshold: str = "refuse",
                 source: nn.Module | None = None):
        super().__init__()
        if softplus_threshold not in SOFTPLUS_THRESHOLD:
            raise SorobustError(f"softplus_threshold {_short(softplus_threshold)} is not one of "
                                f"{', '.join(SOFTPLUS_THRESHOLD)}")
        given = tuple(int(v) for v in in_shape) if in_shape is not None else None
        act, act_where, ops, prev = None, None, [], None
        shape, assumed, flat_input = None, False, False

        def fits(text):
            hint = (f" (the input shape {shape_in} was assumed, MNIST's size: pass the real one, "
                    f"sorobust.models.as_network(module, in_shape=(C, H, W)))") if assumed else ""
            return text + hint

        shape_in = None
        for name, m in layers:
            where = _layer_name(name, m)
            if isinstance(m, nn.Identity):
                continue
            if isinstance(m, nn.modules.dropout._DropoutNd):
                if m.training and m.p > 0:
                    raise SorobustError(f"{where} is in train mode, where it drops units at random: call "
                                        f"module.eval() first")
                continue
            if isinstance(m, nn.Flatten):
                if (m.start_dim, m.end_dim) != (1, -1):
                    raise SorobustError(f"{where}: only nn.Flatten() (start_dim=1, end_dim=-1, keeping the batch) "
                                        f"is supported")
                if shape is None:
                    flat_input = True
                else:
                    shape = (math.prod(shape),)
                continue
            if isinstance(m, nn.Unflatten):
                size = tuple(int(v) for v in m.unflattened_size)
                if m.dim != 1:
                    raise SorobustError(f"{where}: only nn.Unflatten(1, (C, H, W)) is supported")
                if shape is None:
                    shape_in = shape = (math.prod(size),)
                if len(shape) != 1 or shape[0] != math.prod(size):
                    raise SorobustError(f"{where} cannot unflatten a {shape} tensor to {size}")
                shape = size
                continue
            a = _activation_of(m, where, softplus_threshold)
            if a is not None:
                if prev is None:
                    raise SorobustError(f"{where} comes before any Linear or Conv2d layer; a network starts with an "
                                        f"affine layer")
                if prev[0] == "act":
                    raise SorobustError(f"{where} follows another activation, {prev[1]}, with no Linear or Conv2d "
                                        f"between")
                if act is None:
                    act, act_where = a, where
                elif (a.name, a.beta) != (act.name, act.beta):
                    raise SorobustError(f"{where} differs from the activation of {act_where}: sorobust's curvature "
                                        f"bounds and relaxations take one activation for every hidden layer; use "
                                        f"the same activation (and beta) throughout")
                prev = ("act", where)
                continue
            if not isinstance(m, (nn.Linear, nn.Conv2d)):
                raise _refusal(m, where)
            if prev is not None and prev[0] == "affine":
                raise SorobustError(f"{where} follows {prev[1]} with no activation between; merge the two affine "
                                    f"maps or put an activation between them")
            if isinstance(m, nn.Linear):
                if shape is None:
                    shape_in = shape = (m.in_features,)
                if len(shape) != 1:
                    raise SorobustError(f"{where} receives a {shape} tensor, and torch applies a Linear to its last "
                                        f"axis only; put nn.Flatten() before it")
                if shape[0] != m.in_features:
                    raise SorobustError(fits(f"{where} takes {m.in_features} inputs but receives {shape[0]}"))
                op = AffineOp(m)
            else:
                if shape is None:
                    if flat_input:
                        raise SorobustError(f"{where} receives the flattened input; put nn.Unflatten(1, (C, H, W)) "
                                            f"before it")
                    if given is not None and len(given) == 3:
                        shape = given
                    else:
                        shape, assumed = (m.in_channels, 28, 28), True
                    shape_in = shape
                if len(shape) != 3:
                    raise SorobustError(f"{where} receives a flat vector of {shape[0]} values; put "
                                        f"nn.Unflatten(1, (C, H, W)) before it")
                if shape[0] != m.in_channels:
                    raise SorobustError(fits(f"{where} takes {m.in_channels} channels but receives {shape[0]}"))
                if m.padding_mode != "zeros":
                    raise SorobustError(f"{where}: padding_mode '{m.padding_mode}' is not supported, only 'zeros'")
                if m.padding == "same" and any(d * (k - 1) % 2 for d, k in zip(m.dilation, m.kernel_size)):
                    raise SorobustError(f"{where}: padding 'same' is asymmetric for this kernel; give the padding "
                                        f"as numbers")
                op = AffineOp(m, shape)
                if min(op.out_shape[1:]) < 1:
                    raise SorobustError(fits(f"{where}: its {shape} input is smaller than the kernel"))
            ops.append((where, op))
            shape, prev = op.out_shape, ("affine", where)
        if not ops:
            raise SorobustError(f"the network has no Linear or Conv2d layer; {_FIX_SEQUENTIAL}")
        if prev[0] == "act":
            raise SorobustError(f"{prev[1]} follows the last affine layer: sorobust certifies the logits of the last "
                                f"Linear or Conv2d, drop it (a monotone σ does not change the predicted class)")
        if len(ops) < 2:
            raise SorobustError(f"the network has a single affine layer, {ops[0][0]}, and no hidden layer; sorobust "
                                f"needs affine → activation → … → affine")
        if len(shape) != 1:
            raise SorobustError(f"its output, of {ops[-1][0]}, has shape {shape}, not a vector of logits; end it "
                                f"with nn.Flatten()")
        if shape[0] < 2:
            raise SorobustError(f"{ops[-1][0]} gives {shape[0]} logit; a classifier needs at least 2")
        self.sequence = nn.ModuleList([m for _, m in layers])
        self._names = [name for name, _ in layers]
        self._ops = [op for _, op in ops]
        self.activation = act
        self.activation_layer = act_where
        self.softplus_threshold = softplus_threshold
        self.in_shape = tuple(self._ops[0].in_shape) if shape_in is None else tuple(shape_in)
        self.in_dim = math.prod(self.in_shape)
        self.depth = len(self._ops)
        self.n_classes = shape[0]
        #: what the network computes besides its weights: layers, shapes, activation (a cache key, crc._model64)
        self.signature = (tuple((n, repr(m)) for n, m in layers), self.in_shape, act.label, softplus_threshold)
        object.__setattr__(self, "source", self if source is None else source)  # not a submodule

    def ops(self) -> list[AffineOp]:
        """The affine layers W^(1) … W^(L) as :class:`AffineOp` on flat vectors."""
        return list(self._ops)

    def layer_sequence(self) -> list[tuple[str, nn.Module]]:
        """The (name, module) sequence the network was read from."""
        return list(zip(self._names, self.sequence))

    def require_smooth(self) -> None:
        """Stop with one line naming the activation layer if σ is not twice differentiable (ReLU)."""
        if not self.activation.smooth:
            raise SorobustError(f"{self.activation_layer} is not twice differentiable, so curvature bounds, CRC and "
                                f"the second-order attack do not apply; use Sigmoid, Tanh or Softplus, or certify it "
                                f"with the CROWN family (crown, ibp, crown-ibp)")

    @staticmethod
    def _affine(op: AffineOp, a: torch.Tensor) -> torch.Tensor:
        if isinstance(op.module, nn.Linear):
            return op.module(a)
        z = op.module(a.reshape(a.shape[0], *op.in_shape))
        return z.reshape(z.shape[0], -1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = x.flatten(1)
        for op in self._ops[:-1]:
            a = self.activation.fn(self._affine(op, a))
        return self._affine(self._ops[-1], a)

    def extra_repr(self) -> str:
        return f"in_shape={self.in_shape}, activation={self.activation.label}, depth={self.depth}"


def _check_reproduces(module: nn.Module, net: Network) -> None:
    """A sequence read by torch.fx must compute what the module computes: compared at two random inputs (a private
    generator: the global RNG is left alone)."""
    p = next(net.parameters())
    gen = torch.Generator().manual_seed(0)
    x = torch.rand((2, *net.in_shape), generator=gen, dtype=torch.float64).to(p.device, p.dtype)
    try:
        with torch.no_grad():
            want, got = module(x), net(x)
    except Exception as e:
        raise SorobustError(f"cannot run {type(module).__name__} on inputs of shape {net.in_shape} to check the layer "
                            f"sequence read from it ({type(e).__name__}); {_FIX_SEQUENTIAL}") from None
    tol = 1e-10 if p.dtype == torch.float64 else 1e-4
    if want.shape != got.shape or not torch.allclose(got, want, rtol=tol, atol=tol * (1 + float(want.abs().max()))):
        raise SorobustError(f"the layer sequence read from {type(module).__name__}.forward does not reproduce its "
                            f"output; {_FIX_SEQUENTIAL}")


def input_shape_of(x: torch.Tensor) -> tuple | None:
    """The shape of one input of a batch of images x (B, C, H, W), for :func:`as_network`; None for flat inputs."""
    return tuple(x.shape[1:]) if x.dim() == 4 else None


def as_network(module: nn.Module, in_shape: tuple | None = None, softplus_threshold: str = "refuse") -> Network:
    """The :class:`Network` view of ``module``, the one entry of every network into sorobust's numerical code
    (``crc``, ``curvature``, the attacks and the CROWN family call it first).

    ``module`` may be a :class:`Network` (returned as is), the package's :class:`MLP` or :class:`ConvNet` (read
    through their :meth:`~MLP.layer_sequence`, so they are ordinary instances of this path), an ``nn.Sequential``
    of :data:`SUPPORTED_LAYERS` (nested Sequentials expanded), or another module whose forward is such a chain
    (read by torch.fx, then checked against the module's output). Any widths, several convolutions.

    Args:
        in_shape: the shape of one input (C, H, W), needed only when the first affine layer is a Conv2d (default
            (C, 28, 28)); the functions that take inputs pass the shape of theirs. Checked against the network's
            input size.
        softplus_threshold: see :class:`Network`.

    Raises:
        SorobustError: one line naming the layer (position and type) that is refused and why: ReLU is accepted
            here and refused by the curvature code (:meth:`Network.require_smooth`); normalisation, pooling,
            dropout in train mode, other activations, mixed activations, residual connections and branches are
            refused.
    """
    if isinstance(module, Network):
        net = module
    elif not isinstance(module, nn.Module):
        raise SorobustError(f"expected a torch nn.Module (e.g. an nn.Sequential), got {type(module).__name__}")
    else:
        hint = tuple(module.in_shape) if isinstance(module, ConvNet) else in_shape
        traced: list = []
        net = Network(_leaves(module, "", traced), hint, softplus_threshold, source=module)
        if traced:
            _check_reproduces(module, net)
    if in_shape is not None and math.prod(in_shape) != net.in_dim:
        raise SorobustError(f"inputs of shape {tuple(in_shape)} hold {math.prod(in_shape)} values, but the network "
                            f"takes {net.in_dim} ({net.in_shape})")
    return net


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

    if not hasattr(model, "arch"):
        raise SorobustError(f"a {type(model).__name__} has no sorobust architecture to store; save its weights with "
                            f"torch.save(module.state_dict(), path) and read them back with "
                            f"sorobust.models.load(path, module=...)")
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


def load(path: str | Path, arch: dict | str | None = None, map_location="cpu", module: nn.Module | None = None,
         by_position: bool = False) -> nn.Module:
    """Load a checkpoint written by :func:`save`, or a plain state dict of the reference code or of any module.

    A reference-code file (keys ``fc1.weight`` … ``fcL.bias``) holds no architecture: pass ``arch`` (e.g.
    ``"mlp-2x1024-softplus"``). If ``arch`` is given for a sorobust checkpoint, it must match the stored one.
    Loading uses ``weights_only=True``. The returned model is in eval mode; ``model.meta`` holds the metadata.

    With ``module`` (a user's ``nn.Module``, e.g. an ``nn.Sequential``) the weights of the file — a plain state dict
    or the state dict of a sorobust checkpoint — are loaded into it instead (:func:`_load_into`), and it is returned
    in eval mode; ``by_position=True`` matches the file's tensors to the module's by order rather than by name.

    Everything is checked before the model is allocated: the stored (and the requested) architecture by
    :func:`check_arch`, the presence of ``state_dict``, its names and shapes against :func:`param_shapes`, its
    dtypes and finiteness, and ``meta`` being a dict.

    Raises:
        SorobustError: One line saying what is wrong and how to fix it, for a missing, unreadable, truncated or
            unsafe file, a junk architecture, a missing or mismatching state dict, NaN/inf weights, or a
            checkpoint of another architecture than ``arch``.
    """
    path = Path(path)
    if module is not None:
        return _load_into(path, module, map_location, by_position)
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
                                f"(e.g. --arch mlp-2x1024-softplus), or in Python the module it was saved from: "
                                f"sorobust.models.load(path, module=that_module)")
        state, fix = obj, "pass the architecture it was trained with"
        if not any(k in param_shapes(want) for k in obj):
            fix = ("its names are none of sorobust's (fc1.weight …): if it was saved from your own module, load it "
                   "with sorobust.models.load(path, module=that_module)")
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


def _first(items: list, n: int = 3) -> str:
    """The first ``n`` of ``items`` joined, and how many more there are."""
    return ", ".join(items[:n]) + (f" and {len(items) - n} more" if len(items) > n else "")


def _key_diagnosis(state: dict, expected: dict) -> str:
    """What to do about a state dict whose names do not match the module's: a common prefix to strip or add, names
    that differ while the shapes match in order (load by position), or a different module."""
    keys, want = list(state), list(expected)
    for a, b in ((keys, want), (want, keys)):
        # a prefix on every name of a that b lacks (DataParallel's "module.", a wrapper's attribute name)
        head = a[0].split(".")[0] + "." if a and "." in a[0] else None
        if head and all(k.startswith(head) for k in a) and sorted(k[len(head):] for k in a) == sorted(b):
            if a is keys:
                return (f"every name in the file carries the prefix '{head}' that the module's lack: strip it, "
                        f"{{k[{len(head)}:]: v for k, v in state.items()}}, and save again")
            return (f"the module's names carry the prefix '{head}' that the file's lack: load the file into "
                    f"module.{head[:-1]}")
    shapes = [tuple(v.shape) for v in state.values()]
    if shapes == list(expected.values()):
        return (f"the file's tensors have the module's shapes in the same order, only the names differ "
                f"({keys[0]} ~ {want[0]}, …): load them by position, sorobust.models.load(path, module=m, "
                f"by_position=True)")
    return "the file was saved from another network: build the module it was saved from (same layer names and sizes)"


def _load_into(path: Path, module: nn.Module, map_location, by_position: bool) -> nn.Module:
    """Load the weights in ``path`` into the user's ``module`` (see :func:`load`), everything checked first.

    Names and shapes are compared with ``module.state_dict()``: one line lists the missing, unexpected and
    wrong-shape entries (the first three of each) and says what to do (:func:`_key_diagnosis`). Values must be
    tensors, the floating ones finite. The module is changed only once every check has passed.
    """
    if not isinstance(module, nn.Module):
        raise SorobustError(f"module must be a torch nn.Module, got {type(module).__name__}")
    obj = _read(path, map_location, "copy it again or save it again")
    where = f"'{path}'"
    if isinstance(obj, dict) and obj.get("format") == CHECKPOINT_FORMAT and isinstance(obj.get("state_dict"), dict):
        state = obj["state_dict"]
    elif isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        state = obj
    else:
        what = f"a dict with keys {_short(list(obj)[:5])}" if isinstance(obj, dict) else f"a {type(obj).__name__}"
        raise SorobustError(f"{where} holds no state dict ({what}); save the weights with "
                            f"torch.save(module.state_dict(), path)")
    for k, v in state.items():
        if not isinstance(v, torch.Tensor):
            raise SorobustError(f"{where}: entry {_short(k, 40)} is a {type(v).__name__}, not a tensor")
    expected = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    kind = type(module).__name__
    if by_position:
        got = [(k, tuple(v.shape)) for k, v in state.items()]
        if [s for _, s in got] != list(expected.values()):
            bad = next((i for i, ((_, s), e) in enumerate(zip(got, expected.values())) if s != e),
                       min(len(got), len(expected)))
            raise SorobustError(f"{where} cannot be loaded into the {kind} by position: it holds {len(got)} tensors, "
                                f"the module {len(expected)}, and they differ at position {bad}; build the module "
                                f"it was saved from")
        state = dict(zip(expected, state.values()))
    missing = [k for k in expected if k not in state]
    extra = [_short(k, 40) for k in state if k not in expected]
    wrong = [f"{k} {tuple(state[k].shape)} (module: {expected[k]})" for k in expected
             if k in state and tuple(state[k].shape) != expected[k]]
    if missing or extra or wrong:
        problems = [f"{what} {_first(items)}" for what, items in
                    (("missing", missing), ("unexpected", extra), ("wrong shape", wrong)) if items]
        fix = _key_diagnosis(state, expected) if (missing or extra) else (
            "the file was saved from a network of other sizes: build the module with the sizes it was saved with")
        raise SorobustError(f"{where} does not fit the {kind}: {'; '.join(problems)}; {fix}")
    for k, v in state.items():
        if v.is_floating_point() and not torch.isfinite(v).all():
            raise SorobustError(f"{where}: '{k}' holds NaN or infinite values; the file is corrupt or training "
                                f"diverged")
    module.load_state_dict(state)
    check_finite(module, where=where)
    return module.eval()
