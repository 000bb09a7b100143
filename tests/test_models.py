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
