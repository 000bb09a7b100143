"""Tests for sorobust.models: architecture shapes, the AffineOp views of linear/conv layers against an
independently unrolled convolution, and checkpoint I/O (roundtrip, reference-code state dicts, refusals)."""

import math
import pickle

import numpy as np
import pytest
import torch

from sorobust import models
from sorobust.errors import SorobustError
from np_oracles import conv_matrix_np

SMOOTH = ("sigmoid", "tanh", "softplus")


@pytest.fixture(autouse=True)
def float64():
    old, old_threads = torch.get_default_dtype(), torch.get_num_threads()
    torch.set_default_dtype(torch.float64)
    torch.set_num_threads(1)  # tiny tensors; avoids OpenMP stalls on a busy 2-core machine
    yield
    torch.set_default_dtype(old)
    torch.set_num_threads(old_threads)


def _act_np(name, z):
    if name == "sigmoid":
        return 1 / (1 + np.exp(-z))
    if name == "tanh":
        return np.tanh(z)
    if name == "softplus":
        return np.logaddexp(z, 0.0)
    if name == "relu":
        return np.maximum(z, 0.0)
    raise AssertionError(name)


# ------------------------------------------------------------------------------------------------------------
# architectures
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("depth", [2, 3, 4])
def test_mlp_default_parameter_shapes(depth):
    torch.manual_seed(0)
    m = models.mlp(depth)
    dims = [784] + [1024] * (depth - 1) + [10]
    expect = {}
    for i in range(depth):
        expect[f"fc{i + 1}.weight"] = (dims[i + 1], dims[i])
        expect[f"fc{i + 1}.bias"] = (dims[i + 1],)
    got = {k: tuple(v.shape) for k, v in m.state_dict().items()}
    assert got == expect
    assert m.activation_name == "softplus"
    assert m.arch == {"kind": "mlp", "depth": depth, "width": 1024, "activation": "softplus", "in_dim": 784,
                      "n_classes": 10}
    assert models.spec(m.arch) == f"mlp-{depth}x1024-softplus"
    assert models.parse_spec(models.spec(m.arch)) == m.arch


def test_mlp_depth_below_two_refused():
    with pytest.raises(SorobustError):
        models.mlp(1)


@pytest.mark.parametrize("depth", [2, 3, 4])
@pytest.mark.parametrize("act", SMOOTH + ("relu",))
def test_mlp_image_and_flat_inputs_same_logits(depth, act):
    torch.manual_seed(depth)
    m = models.mlp(depth, 16, act).double()
    x = torch.rand(5, 1, 28, 28)
    out_img = m(x)
    out_flat = m(x.reshape(5, 784))
    assert out_img.shape == (5, 10)
    assert torch.equal(out_img, out_flat)


@pytest.mark.parametrize("depth", [2, 3, 4])
@pytest.mark.parametrize("act", SMOOTH + ("relu",))
def test_mlp_forward_by_hand(depth, act):
    torch.manual_seed(10 + depth)
    m = models.mlp(depth, 12, act, in_dim=8, n_classes=4).double()
    x = torch.randn(6, 8) * 2
    a = x.numpy()
    layers = [getattr(m, f"fc{i + 1}") for i in range(depth)]
    for k, layer in enumerate(layers):
        z = a @ layer.weight.detach().numpy().T + layer.bias.detach().numpy()
        a = _act_np(act, z) if k < depth - 1 else z
    np.testing.assert_allclose(m(x).detach().numpy(), a, rtol=1e-12, atol=1e-12)
    # ops(): one AffineOp per layer whose dense() is the weight
    ops = m.ops()
    assert len(ops) == depth
    for op, layer in zip(ops, layers):
        assert torch.equal(op.dense(), layer.weight)
        assert torch.equal(op.bias, layer.bias)


CONV_CASES = [((1, 7, 7), 1), ((1, 7, 7), 2), ((1, 8, 8), 2), ((2, 6, 7), 2), ((1, 9, 8), 3)]


@pytest.mark.parametrize("in_shape,stride", CONV_CASES)
def test_conv_affine_op_against_unrolled_matrix(in_shape, stride):
    torch.manual_seed(3)
    net = models.cnn(channels=2, kernel=3, stride=stride, activation="tanh", in_shape=in_shape, n_classes=3).double()
    op1, op2 = net.ops()
    A_ref, out_shape = conv_matrix_np(net.conv1.weight.detach().numpy(), in_shape, stride)
    D = math.prod(in_shape)
    assert op1.in_dim == D and op1.out_dim == A_ref.shape[0]
    assert tuple(op1.out_shape) == out_shape
    # dense() equals the independently unrolled matrix
    np.testing.assert_allclose(op1.dense().detach().numpy(), A_ref, rtol=0, atol=1e-14)
    # apply() equals the matrix product, for flat batches and extra leading dimensions
    x = torch.randn(4, D)
    np.testing.assert_allclose(op1.apply(x).detach().numpy(), x.numpy() @ A_ref.T, rtol=1e-12, atol=1e-12)
    x3 = torch.randn(2, 3, D)
    np.testing.assert_allclose(op1.apply(x3).detach().numpy(), x3.numpy() @ A_ref.T, rtol=1e-12, atol=1e-12)
    # adjoint() is the transpose: <A x, y> = <x, A^T y>, and equals A_ref^T y
    y = torch.randn(4, op1.out_dim)
    lhs = (op1.apply(x) * y).sum(-1)
    rhs = (x * op1.adjoint(y)).sum(-1)
    torch.testing.assert_close(lhs, rhs, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(op1.adjoint(y).detach().numpy(), y.numpy() @ A_ref, rtol=1e-12, atol=1e-12)
    y3 = torch.randn(2, 3, op1.out_dim)
    np.testing.assert_allclose(op1.adjoint(y3).detach().numpy(), y3.numpy() @ A_ref, rtol=1e-12, atol=1e-12)
    # the bias is the per-channel bias repeated over the output map
    b_ref = np.repeat(net.conv1.bias.detach().numpy(), out_shape[1] * out_shape[2])
    np.testing.assert_array_equal(op1.bias.detach().numpy(), b_ref)
    # the last op is the linear layer
    assert torch.equal(op2.dense(), net.fc2.weight)
    x_lin, y_lin = torch.randn(3, op2.in_dim), torch.randn(3, op2.out_dim)
    torch.testing.assert_close((op2.apply(x_lin) * y_lin).sum(-1), (x_lin * op2.adjoint(y_lin)).sum(-1))


@pytest.mark.parametrize("act", SMOOTH + ("relu",))
@pytest.mark.parametrize("in_shape,stride", CONV_CASES)
def test_conv_forward_by_hand(act, in_shape, stride):
    torch.manual_seed(4)
    net = models.cnn(channels=2, kernel=3, stride=stride, activation=act, in_shape=in_shape, n_classes=3).double()
    A_ref, out_shape = conv_matrix_np(net.conv1.weight.detach().numpy(), in_shape, stride)
    b_ref = np.repeat(net.conv1.bias.detach().numpy(), out_shape[1] * out_shape[2])
    D = math.prod(in_shape)
    x = torch.randn(5, D) * 2
    hidden = _act_np(act, x.numpy() @ A_ref.T + b_ref)
    want = hidden @ net.fc2.weight.detach().numpy().T + net.fc2.bias.detach().numpy()
    np.testing.assert_allclose(net(x).detach().numpy(), want, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(net(x.reshape(5, *in_shape)).detach().numpy(), want, rtol=1e-12, atol=1e-12)


def test_cnn_default_shapes():
    net = models.cnn()
    op1, op2 = net.ops()
    assert op1.out_dim == 5 * 26 * 26 == op2.in_dim
    assert tuple(net.fc2.weight.shape) == (10, 3380)
    assert models.spec(net.arch) == "cnn-5c3k1s-tanh"


# ------------------------------------------------------------------------------------------------------------
# checkpoints
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_save_load_roundtrip(tmp_path, kind):
    torch.manual_seed(5)
    if kind == "mlp":
        m = models.mlp(3, 16, "tanh")
        x = torch.rand(4, 1, 28, 28)
    else:
        m = models.cnn(channels=2, kernel=3, stride=2, activation="sigmoid", n_classes=10)
        x = torch.rand(4, 1, 28, 28)
    meta = {"epoch": 7, "gamma": 0.005, "note": "ok", "flags": [True, None], "nested": {"a": [1, 2.5]}}
    path = models.save(m, tmp_path / "sub" / "model.pt", **meta)
    assert path.is_file()
    back = models.load(path)
    assert type(back) is type(m)
    assert back.arch == m.arch
    assert back.meta == meta
    assert not back.training
    with torch.no_grad():
        assert torch.equal(back(x), m(x))
    for k, v in m.state_dict().items():
        assert torch.equal(back.state_dict()[k], v)
    # the file is plain data: torch's safe loader reads it
    obj = torch.load(path, weights_only=True)
    assert obj["arch"] == m.arch and obj["meta"] == meta
    assert set(obj["state_dict"]) == set(m.state_dict())
    # loading with the matching architecture (spec string or dict) works too
    assert models.load(path, arch=models.spec(m.arch)).arch == m.arch
    assert models.load(path, arch=dict(m.arch)).arch == m.arch


def test_save_load_float64_model(tmp_path):
    torch.manual_seed(6)
    m = models.mlp(2, 16, "softplus").double()
    path = models.save(m, tmp_path / "m64.pt")
    back = models.load(path)
    x = torch.rand(3, 784, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(back(x.to(back.fc1.weight.dtype)).double(), m(x), rtol=0, atol=0)


def _reference_state_dict(width=16, depth=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    dims = [784] + [width] * (depth - 1) + [10]
    sd = {}
    for i in range(depth):
        sd[f"fc{i + 1}.weight"] = torch.randn(dims[i + 1], dims[i], generator=g, dtype=torch.float32) * 0.05
        sd[f"fc{i + 1}.bias"] = torch.randn(dims[i + 1], generator=g, dtype=torch.float32) * 0.1
    return sd


@pytest.mark.parametrize("act", SMOOTH)
def test_load_reference_state_dict(tmp_path, act):
    sd = _reference_state_dict()
    path = tmp_path / "ref.pt"
    torch.save(sd, path)
    m = models.load(path, arch=f"mlp-2x16-{act}")
    assert m.arch["activation"] == act and m.depth == 2 and m.width == 16
    x = torch.rand(3, 784, dtype=torch.float32)
    want = _act_np(act, x.double().numpy() @ sd["fc1.weight"].double().numpy().T + sd["fc1.bias"].double().numpy())
    want = want @ sd["fc2.weight"].double().numpy().T + sd["fc2.bias"].double().numpy()
    with torch.no_grad():
        got = m(x.to(m.fc1.weight.dtype)).double().numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    for k, v in sd.items():
        assert torch.equal(m.state_dict()[k].to(v.dtype), v)
    # without an architecture it is refused with a one-line error
    with pytest.raises(SorobustError) as ei:
        models.load(path)
    assert "\n" not in str(ei.value)


def test_load_reference_state_dict_three_layers(tmp_path):
    sd = _reference_state_dict(depth=3, seed=1)
    path = tmp_path / "ref3.pt"
    torch.save(sd, path)
    m = models.load(path, arch="mlp-3x16-softplus")
    assert m.depth == 3
    with pytest.raises(SorobustError):
        models.load(path, arch="mlp-2x16-softplus")


def test_load_reference_state_dict_wrong_shapes(tmp_path):
    path = tmp_path / "ref.pt"
    torch.save(_reference_state_dict(width=16), path)
    for arch in ("mlp-2x32-softplus", "mlp-3x16-softplus", "cnn-5c3k1s-tanh"):
        with pytest.raises(SorobustError) as ei:
            models.load(path, arch=arch)
        assert "\n" not in str(ei.value)


def test_load_as_other_architecture_refused(tmp_path):
    torch.manual_seed(7)
    m = models.mlp(2, 16, "softplus")
    path = models.save(m, tmp_path / "m.pt")
    for arch in ("mlp-2x16-tanh", "mlp-3x16-softplus", "mlp-2x32-softplus", "cnn-5c3k1s-tanh",
                 {"kind": "mlp", "depth": 2, "width": 16, "activation": "sigmoid", "in_dim": 784, "n_classes": 10}):
        with pytest.raises(SorobustError) as ei:
            models.load(path, arch=arch)
        assert "\n" not in str(ei.value)


def test_load_nan_weight_refused(tmp_path):
    torch.manual_seed(8)
    m = models.mlp(2, 16, "softplus")
    with torch.no_grad():
        m.fc1.weight[3, 5] = float("nan")
    path = models.save(m, tmp_path / "nan.pt")
    with pytest.raises(SorobustError) as ei:
        models.load(path)
    assert "\n" not in str(ei.value)
    # also through a plain reference state dict, and for infinities
    sd = _reference_state_dict()
    sd["fc2.bias"][1] = float("inf")
    torch.save(sd, tmp_path / "inf.pt")
    with pytest.raises(SorobustError):
        models.load(tmp_path / "inf.pt", arch="mlp-2x16-softplus")


def test_load_missing_and_garbage_files(tmp_path):
    with pytest.raises(SorobustError):
        models.load(tmp_path / "nope.pt")
    (tmp_path / "garbage.pt").write_bytes(b"this is not a checkpoint")
    with pytest.raises(SorobustError) as ei:
        models.load(tmp_path / "garbage.pt")
    assert "\n" not in str(ei.value)
    torch.save([torch.zeros(2)], tmp_path / "list.pt")
    with pytest.raises(SorobustError):
        models.load(tmp_path / "list.pt", arch="mlp-2x16-softplus")


class _Evil:
    """Unpickling this calls open(marker, 'w'), i.e. creates the marker file (code execution)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("how", ["torch_save_object", "torch_save_in_dict", "torch_save_in_checkpoint",
                                 "plain_pickle"])
def test_malicious_pickle_refused_without_running_code(tmp_path, how):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    evil = _Evil(marker)
    if how == "torch_save_object":
        torch.save(evil, path)
    elif how == "torch_save_in_dict":
        torch.save({"fc1.weight": torch.zeros(16, 784), "x": evil}, path)
    elif how == "torch_save_in_checkpoint":
        torch.manual_seed(9)
        m = models.mlp(2, 16, "softplus")
        torch.save({"format": models.CHECKPOINT_FORMAT, "arch": m.arch, "state_dict": m.state_dict(),
                    "meta": {"evil": evil}}, path)
    else:
        with open(path, "wb") as fh:
            pickle.dump({"fc1.weight": evil}, fh, protocol=2)
    with pytest.raises(SorobustError) as ei:
        models.load(path, arch="mlp-2x16-softplus")
    assert "\n" not in str(ei.value)
    with pytest.raises(SorobustError):
        models.load(path)
    assert not marker.exists()

    # sanity check of the test itself: an unsafe load of the same bytes does run the payload
    marker2 = tmp_path / "pwned2"
    path2 = tmp_path / "evil2.pt"
    torch.save(_Evil(marker2), path2)
    torch.load(path2, weights_only=False)
    assert marker2.exists()


# ------------------------------------------------------------------------------------------------------------
# validation before allocation: one line for every bad architecture or checkpoint
# ------------------------------------------------------------------------------------------------------------


@pytest.fixture
def no_build(monkeypatch):
    """Make constructing any model fail loudly: every refusal below must come before allocation."""

    def boom(*a, **k):
        """Stand-in for the model classes."""
        raise AssertionError("a model was constructed before the input was validated")

    monkeypatch.setattr(models, "MLP", boom)
    monkeypatch.setattr(models, "ConvNet", boom)


def _good_payload():
    """What ``models.save`` writes for an mlp-2x16-softplus (built by hand: no model may be constructed here)."""
    arch = {"kind": "mlp", "depth": 2, "width": 16, "activation": "softplus", "in_dim": 784, "n_classes": 10}
    return {"format": models.CHECKPOINT_FORMAT, "arch": arch, "state_dict": _reference_state_dict(width=16, seed=11),
            "meta": {"epoch": 1}}


def _arch(**kw):
    """A mutation of the checkpoint's arch field: keys set to the given values (None deletes)."""

    def mutate(p):
        """Set or delete the keys."""
        for k, v in kw.items():
            if v is None:
                p["arch"].pop(k)
            else:
                p["arch"][k] = v

    return mutate


def _cnn_arch(**kw):
    """A mutation replacing the arch by a conv net's, with the given keys changed."""

    def mutate(p):
        """Replace the arch."""
        p["arch"] = {"kind": "cnn", "channels": 2, "kernel": 3, "stride": 1, "activation": "tanh",
                     "in_shape": [1, 28, 28], "n_classes": 10, **kw}

    return mutate


def _set(key, value):
    """A mutation setting (or, for None, deleting) a top-level entry of the checkpoint."""

    def mutate(p):
        """Set or delete the entry."""
        if value is None:
            p.pop(key)
        else:
            p[key] = value

    return mutate


def _sd(fn):
    """A mutation applying ``fn`` to the state dict."""
    return lambda p: fn(p["state_dict"])


def _nan(sd):
    """One NaN weight."""
    sd["fc1.weight"][3, 5] = float("nan")


_BAD_CKPT = [  # (id, mutation of the saved payload, words the one line must hold)
    ("arch-not-a-dict", _set("arch", "mlp-2x16-softplus"), ["stored architecture", "expected an architecture dict, "
                                                            "got str"]),
    ("arch-a-list", _set("arch", [1, 2]), ["expected an architecture dict, got list"]),
    ("arch-missing", _set("arch", None), ["has no 'arch' entry", "retrain it or pick another checkpoint"]),
    ("unknown-kind", _arch(kind="transformer"), ["unknown architecture kind 'transformer'"]),
    ("unknown-key", _arch(colour="blue"), ["unknown key(s) 'colour'", "valid keys: kind, depth, width"]),
    ("missing-width", _arch(width=None), ["mlp architecture lacks width"]),
    ("unknown-activation", _arch(activation="swish"), ["unknown activation 'swish'", "sigmoid, tanh, softplus"]),
    ("activation-not-str", _arch(activation=3), ["unknown activation 3"]),
    ("width-2e9-float", _arch(width=2e9), ["width 2000000000.0 is not an integer"]),
    ("width-2e9-int", _arch(width=2_000_000_000), ["width 2000000000 is out of range (must be 1 to 1048576)"]),
    ("width-1e6-too-many-params", _arch(width=10**6), ["mlp-2x1000000-softplus would have 7.95e+08 parameters, "
                                                       "more than the limit 2.68e+08"]),
    ("width-string", _arch(width="16"), ["width '16' is not an integer"]),
    ("width-bool", _arch(width=True), ["width True is not an integer"]),
    ("width-zero", _arch(width=0), ["width 0 is out of range"]),
    ("depth-1", _arch(depth=1), ["depth (number of linear layers) 1 is out of range (must be 2 to 64)"]),
    ("depth-huge", _arch(depth=10**6), ["depth (number of linear layers) 1000000 is out of range"]),
    ("depth-wide-product", _arch(depth=60, width=4096), ["would have", "parameters, more than the limit"]),
    ("one-class", _arch(n_classes=1), ["n_classes 1 is out of range"]),
    ("cnn-kernel-too-big", _cnn_arch(kernel=40), ["kernel 40 is larger than the 28x28 input"]),
    ("cnn-in-shape-2d", _cnn_arch(in_shape=[28, 28]), ["in_shape [28, 28] must be [channels, height, width]"]),
    ("cnn-channels-2e9", _cnn_arch(channels=2 * 10**9), ["out of range"]),
    ("state-dict-missing", _set("state_dict", None), ["has no state_dict", "retrain it"]),
    ("state-dict-a-list", _set("state_dict", [torch.zeros(2)]), ["state_dict is a list, not a dict of tensors"]),
    ("state-entry-not-tensor", _sd(lambda sd: sd.update({"fc2.bias": "zeros"})),
     ["state_dict entry 'fc2.bias' is a str, not a tensor"]),
    ("state-key-missing", _sd(lambda sd: sd.pop("fc2.bias")), ["does not fit architecture mlp-2x16-softplus",
                                                               "missing fc2.bias"]),
    ("state-key-extra", _sd(lambda sd: sd.update({"fc3.weight": torch.zeros(2, 2)})), ["unexpected 'fc3.weight'"]),
    ("state-arch-says-wider", _arch(width=32), ["does not fit architecture mlp-2x32-softplus",
                                                "wrong shape fc1.weight (16, 784) (expected (32, 784))"]),
    ("state-int-dtype", _sd(lambda sd: sd.update({"fc2.bias": torch.zeros(10, dtype=torch.int64)})),
     ["parameter 'fc2.bias'", "torch.int64", "expected dense floating point"]),
    ("nan-weight", _sd(_nan), ["parameter 'fc1.weight' holds NaN or infinite values"]),
    ("meta-not-a-dict", _set("meta", [1]), ["meta is a list, not a dict"]),
    ("future-format", _set("format", "sorobust-checkpoint/9"), ["'sorobust-checkpoint/9'", "this sorobust reads "
                                                                "sorobust-checkpoint/1"]),
]


@pytest.mark.parametrize("case,mutate,words", _BAD_CKPT, ids=[r[0] for r in _BAD_CKPT])
def test_bad_checkpoint_one_line_before_allocation(tmp_path, no_build, case, mutate, words):
    """A checkpoint with one bad field is refused with one line naming it, before any model is built."""
    payload = _good_payload()
    mutate(payload)
    path = tmp_path / "bad.pt"
    torch.save(payload, path)
    with pytest.raises(SorobustError) as ei:
        models.load(path)
    msg = str(ei.value)
    assert "\n" not in msg and str(path) in msg, msg
    for w in words:
        assert w in msg, (w, msg)


def _write_truncated(path):
    """A good checkpoint at ``path`` without its last 100 bytes."""
    torch.save(_good_payload(), path)
    path.write_bytes(path.read_bytes()[:-100])


_BAD_FILES = [  # (id, writer of the file, arch option, words)
    ("truncated", _write_truncated, None, ["truncated or corrupt", "copy it again or retrain it"]),
    ("empty", lambda p: p.write_bytes(b""), None, ["(0 bytes)", "not a torch checkpoint"]),
    ("text", lambda p: p.write_text("not a checkpoint"), None, ["not a torch checkpoint"]),
    ("a-directory", lambda p: p.mkdir(), None, ["is a directory, not a file"]),
    ("a-list", lambda p: torch.save([torch.zeros(2)], p), None, ["neither a sorobust checkpoint nor a state dict",
                                                                 "it holds a list"]),
    ("other-arch-asked", lambda p: torch.save(_good_payload(), p), "mlp-2x32-softplus",
     ["holds a mlp-2x16-softplus but mlp-2x32-softplus was asked for"]),
    ("junk-arch-asked", lambda p: torch.save(_good_payload(), p), "mlp-2x16-swish", ["unknown activation 'swish'"]),
    ("huge-arch-asked", lambda p: torch.save(_good_payload(), p), "mlp-2x2000000000-softplus", ["out of range"]),
    ("reference-sd-wrong-width", lambda p: torch.save(_reference_state_dict(width=16), p), "mlp-2x32-softplus",
     ["does not fit architecture mlp-2x32-softplus", "pass the architecture it was trained with"]),
]


@pytest.mark.parametrize("case,write,arch,words", _BAD_FILES, ids=[r[0] for r in _BAD_FILES])
def test_bad_checkpoint_file_one_line(tmp_path, no_build, case, write, arch, words):
    """Unreadable files and architecture options that do not fit: one line, no model built."""
    path = tmp_path / "bad.pt"
    write(path)
    with pytest.raises(SorobustError) as ei:
        models.load(path, arch=arch)
    msg = str(ei.value)
    assert "\n" not in msg, msg
    for w in words:
        assert w in msg, (w, msg)


_BAD_SPECS = [  # (spec string or arch dict given to build, words)
    ("mlp-1x16-softplus", "depth (number of linear layers) 1 is out of range"),
    ("mlp-2x0-softplus", "width 0 is out of range"),
    ("mlp-2x16-swish", "unknown activation 'swish'"),
    ("mlp-2x2000000000-softplus", "width 2000000000 is out of range"),
    ("mlp-2x1000000-softplus", "more than the limit"),
    ("mlp-2x" + "9" * 5000 + "-softplus", "(5000 digits) is out of range"),
    ("cnn-5c40k1s-tanh", "kernel 40 is larger than the 28x28 input"),
    ("cnn-0c3k1s-tanh", "channels 0 is out of range"),
    ("resnet-50", "cannot parse architecture 'resnet-50'"),
    ({"kind": "mlp", "depth": 2, "width": 16.0, "activation": "tanh"}, "width 16.0 is not an integer"),
    ({"kind": "mlp", "depth": 2, "width": 16, "activation": "tanh", "colour": 1}, "unknown key(s) 'colour'"),
    ({"kind": "cnn", "channels": 2, "kernel": 3, "stride": 1}, "cnn architecture lacks activation"),
    ("mlp-2x16-softplus ", "cannot parse"),
]


@pytest.mark.parametrize("arch,words", _BAD_SPECS, ids=[str(a)[:40] for a, _ in _BAD_SPECS])
def test_bad_architecture_one_line_before_allocation(no_build, arch, words):
    """Bad spec strings and arch dicts are refused by build (and parse_spec) before any allocation."""
    with pytest.raises(SorobustError) as ei:
        models.build(arch)
    msg = str(ei.value)
    assert "\n" not in msg and words in msg, msg
    if isinstance(arch, str):
        with pytest.raises(SorobustError, match="out of range|unknown|more than|larger|cannot parse"):
            models.parse_spec(arch)


@pytest.mark.parametrize("arch", ["mlp-2x16-softplus", "mlp-5x7-tanh", "cnn-5c3k1s-tanh", "cnn-2c4k3s-relu",
                                  {"kind": "mlp", "depth": 3, "width": 5, "activation": "sigmoid", "in_dim": 8,
                                   "n_classes": 4},
                                  {"kind": "cnn", "channels": 2, "kernel": 3, "stride": 2, "activation": "tanh",
                                   "in_shape": [2, 9, 8], "n_classes": 3}])
def test_param_shapes_match_the_built_model(arch):
    """The arithmetic shapes used to vet a checkpoint are those of the model that would be built."""
    checked = models.parse_spec(arch) if isinstance(arch, str) else models.check_arch(arch)
    assert models.param_shapes(checked) == {k: tuple(v.shape) for k, v in models.build(arch).state_dict().items()}
    assert models.check_arch(models.build(arch).arch) == models.build(arch).arch  # a model's own arch is valid


def test_load_train_state_refusals(tmp_path, no_build):
    """Resuming from an unreadable or malformed file stops with one line that says to delete it."""
    path = tmp_path / "run.pt"
    _write_truncated(path)
    with pytest.raises(SorobustError) as ei:
        models.load_train_state(path)
    assert "\n" not in str(ei.value) and "delete it to train from scratch" in str(ei.value)
    payload = _good_payload()
    payload["train_state"] = [1]
    torch.save(payload, path)
    with pytest.raises(SorobustError, match="train_state is a list, not a dict"):
        models.load_train_state(path)
    payload["train_state"] = {"epoch": 1, "last_state_dict": {"fc1.weight": torch.zeros(3, 3)}}
    torch.save(payload, path)
    with pytest.raises(SorobustError) as ei:
        models.load_train_state(path)
    assert "last_state_dict" in str(ei.value) and "missing fc1.bias" in str(ei.value)
    payload["arch"]["width"] = 2e9
    torch.save(payload, path)
    with pytest.raises(SorobustError, match="width 2000000000.0 is not an integer"):
        models.load_train_state(path)
    payload = _good_payload()
    torch.save(payload, path)
    assert models.load_train_state(path) is None  # no train state: nothing to resume


def test_load_train_state_roundtrip(tmp_path):
    """A train state written by save comes back as written."""
    m = models.mlp(2, 16, "softplus")
    sd = {k: v.detach().clone() for k, v in m.state_dict().items()}
    state = {"epoch": 2, "last_state_dict": sd, "best": {"epoch": 1, "state_dict": sd}, "optimizer": {}}
    path = models.save(m, tmp_path / "m.pt", train_state=state)
    back = models.load_train_state(path)
    assert back["epoch"] == 2 and torch.equal(back["last_state_dict"]["fc1.weight"], sd["fc1.weight"])
