"""Training (sorobust.train, ``sorobust train``): the K regulariser's gradient, the effect of γ, CRT's attack,
bitwise reproducibility and resumption, accuracy of standard training, model selection, one-line CLI errors and
the checkpoint's contents.

Every expected value comes from an independent computation: central finite differences, the explicit Theorem-4
formulas of paper.md §1.5 (numpy spectral norms), a second run, a plain re-evaluation of the stored weights, or a
hash recomputed from the files.
"""

import hashlib
import math
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

import sorobust
from sorobust import attacks, cli, curvature, data, models
from sorobust.train import TrainConfig, Trainer, evaluate

pytestmark = pytest.mark.usefixtures("one_thread")

# g = sup|σ'|, h = sup|σ''| (paper.md §1.6), written out here rather than read from sorobust.activations
CONSTANTS = {"sigmoid": (0.25, 1 / (6 * math.sqrt(3))), "tanh": (1.0, 4 / (3 * math.sqrt(3))),
             "softplus": (1.0, 0.25)}


# --------------------------------------------------------------------------------------------------- helpers


def _runner_up(model, X, y):
    """Largest logit other than the label (computed here, not with sorobust's helper)."""
    with torch.no_grad():
        z = model(X).clone()
    z[torch.arange(len(y)), y] = -float("inf")
    return z.argmax(1)


def _margin(model, x, y, t):
    with torch.no_grad():
        z = model(x)
    i = torch.arange(len(y))
    return z[i, y] - z[i, t]


def _assert_same(a, b, where="root", skip=("seconds",)):
    """Bitwise equality of nested dicts/lists of tensors and plain data (keys in ``skip`` ignored)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor), where
        assert a.dtype == b.dtype and a.shape == b.shape, where
        assert torch.equal(a, b), f"{where} differs"
    elif isinstance(a, dict):
        assert isinstance(b, dict), where
        ka = {k for k in a if k not in skip}
        kb = {k for k in b if k not in skip}
        assert ka == kb, f"{where}: keys {sorted(map(str, ka ^ kb))} differ"
        for k in ka:
            _assert_same(a[k], b[k], f"{where}.{k}", skip)
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), where
        for i, (u, v) in enumerate(zip(a, b)):
            _assert_same(u, v, f"{where}[{i}]", skip)
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def _tiny_model(depth, act, seed):
    """A depth-L MLP 6-5^(L-1)-4 with generic N(0, 0.8²) weights (no ties in the max, distinct singular values)."""
    model = models.mlp(depth=depth, width=5, activation=act, in_dim=6, n_classes=4)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(0.8 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return model


def _paper_K(model, y, t, act):
    """Theorem 4's K from the explicit L = 2, 3, 4 formulas of paper.md §1.5 (numpy, float64)."""
    g, h = CONSTANTS[act]
    Ws = [layer.weight.detach().numpy().astype(np.float64) for layer in model.layers()]
    n = [np.linalg.norm(W, 2) for W in Ws[:-1]]
    out = []
    for yi, ti in zip(y.tolist(), t.tolist()):
        w = np.abs(Ws[-1][yi] - Ws[-1][ti])
        if len(Ws) == 2:
            k = n[0] ** 2 * w.max()
        elif len(Ws) == 3:
            W2 = np.abs(Ws[1])
            k = n[0] ** 2 * (g * w @ W2).max() + g ** 2 * n[0] ** 2 * n[1] ** 2 * w.max()
        else:
            W2, W3 = np.abs(Ws[1]), np.abs(Ws[2])
            k = (n[0] ** 2 * (g ** 2 * w @ W3 @ W2).max()
                 + g ** 2 * n[0] ** 2 * n[1] ** 2 * (g * w @ W3).max()
                 + g ** 4 * n[0] ** 2 * n[1] ** 2 * n[2] ** 2 * w.max())
        out.append(h * k)
    return np.array(out)


# ------------------------------------------------------------------------------ 1. K and its weight gradient

PAIRS_Y = torch.tensor([0, 1, 2, 3, 0, 3])
PAIRS_T = torch.tensor([1, 2, 3, 0, 2, 1])


@pytest.mark.parametrize("depth", [2, 3, 4])
@pytest.mark.parametrize("act", ["sigmoid", "tanh", "softplus"])
def test_K_value_and_gradient_match_paper_formula_and_finite_differences(depth, act, float64_single_thread):
    model = _tiny_model(depth, act, seed=10 * depth + len(act))
    y, t = PAIRS_Y, PAIRS_T
    c = torch.linspace(0.5, 1.5, len(y))  # weights of the pairs in the scalar objective

    K = curvature.K(model, y, t)
    np.testing.assert_allclose(K.detach().numpy(), _paper_K(model, y, t, act), rtol=1e-12)

    weights = [layer.weight for layer in model.layers()]
    biases = [layer.bias for layer in model.layers()]

    def objective():
        return (c * curvature.K(model, y, t)).sum()

    grads = torch.autograd.grad(objective(), weights + biases, allow_unused=True)
    for gb in grads[len(weights):]:  # K does not depend on the biases
        assert gb is None or torch.count_nonzero(gb) == 0

    eps = 1e-6
    for W, gW in zip(weights, grads[:len(weights)]):
        fd = torch.empty_like(W)
        with torch.no_grad():
            for i in range(W.numel()):
                w0 = W.view(-1)[i].item()
                W.view(-1)[i] = w0 + eps
                fp = objective().item()
                W.view(-1)[i] = w0 - eps
                fm = objective().item()
                W.view(-1)[i] = w0
                fd.view(-1)[i] = (fp - fm) / (2 * eps)
        scale = gW.abs().max().item()
        assert scale > 0
        err = (fd - gW).abs().max().item()
        assert err <= 1e-6 * scale, f"layer {W.shape}: |FD - autograd| = {err:.3e} (scale {scale:.3e})"

    # converged power iteration gives the same K and the same gradient as exact spectral norms
    norms = curvature.SpectralNorms(model, n_iter=200)()
    Kp = curvature.K(model, y, t, norms=norms)
    assert torch.allclose(Kp, K, rtol=1e-8, atol=0)
    gp = torch.autograd.grad((c * Kp).sum(), weights)
    for a, b in zip(gp, grads[:len(weights)]):
        assert (a - b).abs().max().item() <= 1e-6 * b.abs().max().item()


# ---------------------------------------------------------------------------------- 2. γ > 0 lowers K


def _mean_exact_K(model, X, y):
    t = _runner_up(model, X, y)
    with torch.no_grad():
        return curvature.K(model, y, t).mean().item()


def test_gamma_lowers_K_and_gamma_zero_is_standard_training(data_dir):
    base = dict(arch="mlp-2x32-softplus", epochs=1, limit=1000, seed=3)
    runs = {}
    for name, extra in {"standard": dict(method="standard"), "g0": dict(method="gamma", gamma=0.0),
                        "g": dict(method="gamma", gamma=0.1)}.items():
        model, hist = Trainer(TrainConfig(**base, **extra), data_dir=data_dir, progress=False).fit()
        runs[name] = model
    # γ = 0 only monitors K: the weights are those of plain cross-entropy training
    _assert_same(runs["standard"].state_dict(), runs["g0"].state_dict())
    Xte, yte = data.load_tensors("mnist", "test", data_dir=data_dir, limit=1000)
    k0, kg = _mean_exact_K(runs["g0"], Xte, yte), _mean_exact_K(runs["g"], Xte, yte)
    assert kg < k0, (kg, k0)


# ---------------------------------------------------------------------------- 3. CRT's x* lies on the sphere


@pytest.mark.parametrize("rho", [1.58, 0.5])
def test_crt_attack_on_sphere_and_kkt_at_least_as_strong_as_mm(rho, data_dir):
    cfg = TrainConfig(arch="mlp-2x32-softplus", method="crt", gamma=0.01, rho=rho, epochs=1, limit=640)
    model, hist = Trainer(cfg, data_dir=data_dir, progress=False).fit()
    assert hist[-1]["attack_success"] >= 0.95

    X, y = data.load_tensors("mnist", "train", data_dir=data_dir, limit=64)
    t = _runner_up(model, X, y)
    cb = curvature.CurvatureBounds(model, estimate=True)
    x0 = X.flatten(1)
    res = {}
    for solver in ("kkt", "mm"):
        r = attacks.second_order(model, X, y, rho, targets=t, bounds_cache=cb, solver=solver)
        xs = r.x_adv.reshape(len(y), -1)
        on_sphere = ((xs - x0).norm(dim=1) - rho).abs() <= 1e-4
        res[solver] = (on_sphere, _margin(model, xs, y, t))
    ok_k, f_k = res["kkt"]
    ok_m, f_m = res["mm"]
    assert ok_k.float().mean().item() >= 0.95
    assert ok_k.float().mean() >= ok_m.float().mean()
    both = ok_k & ok_m
    assert both.any()
    assert (f_k[both] <= f_m[both] + 1e-3).all(), (f_k - f_m)[both].max()


# ------------------------------------------------------------------ 4. resume == uninterrupted run, bitwise


def test_resume_after_interrupt_equals_uninterrupted_run(tmp_path, data_dir, monkeypatch):
    cfg = TrainConfig(arch="mlp-2x16-softplus", method="crt", gamma=0.05, rho=0.5, epochs=2, limit=320,
                      selection="best-test", seed=4)
    a, b = tmp_path / "a.pt", tmp_path / "b.pt"
    Trainer(cfg, data_dir=data_dir, out=a, progress=False).fit()

    orig = Trainer.run_epoch
    calls = []

    def interrupted(self):
        calls.append(self.epoch)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return orig(self)

    monkeypatch.setattr(Trainer, "run_epoch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        Trainer(cfg, data_dir=data_dir, out=b, progress=False).fit()
    assert not b.exists()  # no half-trained model at the output path
    assert models.load_train_state(Path(str(b) + ".partial"))["epoch"] == 1
    Trainer(cfg, data_dir=data_dir, out=b, progress=False).fit()
    assert calls == [0, 1, 1]  # the resumed run only ran the second epoch

    A, B = torch.load(a, weights_only=True), torch.load(b, weights_only=True)
    _assert_same(A["state_dict"], B["state_dict"], "state_dict")
    _assert_same(A["train_state"]["optimizer"], B["train_state"]["optimizer"], "optimizer")
    _assert_same(A["train_state"]["last_state_dict"], B["train_state"]["last_state_dict"], "last_state_dict")
    _assert_same(A["train_state"]["spectral_u"], B["train_state"]["spectral_u"], "spectral_u")
    _assert_same(A["train_state"]["best"], B["train_state"]["best"], "best")
    _assert_same(A["meta"]["history"], B["meta"]["history"], "history")
    assert len(A["meta"]["history"]) == 2
    assert A["meta"]["selected_epoch"] == B["meta"]["selected_epoch"]


# ------------------------------------------------------------------- 5. same config and seed ⇒ same weights


@pytest.mark.parametrize("method", ["crt", "pgd"])
def test_same_config_and_seed_give_bitwise_identical_weights(method, data_dir):
    def run(seed):
        cfg = TrainConfig(arch="mlp-2x16-softplus", method=method, gamma=0.01 if method == "crt" else 0.0,
                          rho=0.5, epochs=1, limit=256, seed=seed, pgd_steps=3)
        return Trainer(cfg, data_dir=data_dir, progress=False).fit()

    (m1, h1), (m2, h2), (m3, _) = run(7), run(7), run(8)
    _assert_same(m1.state_dict(), m2.state_dict())
    _assert_same(h1, h2)
    assert not torch.equal(m1.fc1.weight, m3.fc1.weight)  # the comparison is not vacuous


# ------------------------------------------------------------------- 6. standard training learns MNIST


def test_one_epoch_standard_training_exceeds_90_percent(data_dir):
    # One full epoch (938 Adam steps): a 2x256 softplus net needs it; on 10k-20k points plain PyTorch training of
    # the same net reaches only ~86-89%.
    cfg = TrainConfig(arch="mlp-2x256-softplus", method="standard", epochs=1)
    model, hist = Trainer(cfg, data_dir=data_dir, progress=False).fit()
    Xte, yte = data.load_tensors("mnist", "test", data_dir=data_dir, limit=5000)
    acc = evaluate(model, Xte, yte)
    with torch.no_grad():
        acc_here = (model(Xte).argmax(1) == yte).double().mean().item()
    assert acc == pytest.approx(acc_here, abs=1e-12)
    assert acc > 0.90


# ------------------------------------------------------------------------------ 7. one-line CLI errors

BAD_ARGS = {
    "unknown-activation": ["--arch", "mlp", "--activation", "bogus"],
    "negative-gamma": ["--arch", "mlp-2x16-softplus", "--gamma", "-1"],
    "depth-1": ["--arch", "mlp", "--depth", "1"],
    "crt-relu": ["--arch", "mlp", "--width", "16", "--method", "crt", "--activation", "relu"],
}


@pytest.mark.parametrize("case", list(BAD_ARGS))
def test_cli_bad_arguments_stop_with_one_line(case, tmp_path, data_dir, capsys):
    out = tmp_path / "model.pt"
    rc = cli.main(["train", *BAD_ARGS[case], "--epochs", "1", "--limit", "64", "--data-dir", str(data_dir),
                   "--device", "cpu", "--no-progress", "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    assert list(tmp_path.iterdir()) == []  # no checkpoint, summary or temporary file


# ------------------------------------------------------------------------------------- 8. model selection


def _fit_with_snapshots(cfg, data_dir, out, monkeypatch):
    """Fit, keeping a copy of the weights after every epoch."""
    snaps = []
    orig = Trainer.run_epoch

    def run_epoch(self):
        orig(self)
        snaps.append({k: v.detach().clone() for k, v in self.model.state_dict().items()})

    monkeypatch.setattr(Trainer, "run_epoch", run_epoch)
    Trainer(cfg, data_dir=data_dir, out=out, progress=False).fit()
    monkeypatch.setattr(Trainer, "run_epoch", orig)
    return models.load(out), snaps


def _first_argmax(values):
    return max(range(len(values)), key=lambda i: (values[i], -i)) + 1


def test_selection_best_test_and_last(tmp_path, data_dir, monkeypatch):
    # settings where the test accuracy peaks before the last epoch, so best-test and last differ
    common = dict(arch="mlp-2x32-softplus", method="standard", epochs=3, limit=600, lr=0.03, seed=1)
    Xte, yte = data.load_tensors("mnist", "test", data_dir=data_dir, limit=600)

    best, snaps = _fit_with_snapshots(TrainConfig(**common, selection="best-test"), data_dir, tmp_path / "bt.pt",
                                      monkeypatch)
    hist = best.meta["history"]
    assert len(hist) == 3 and best.meta["selected_on_test_set"] is True and best.meta["selection"] == "best-test"
    accs = [h["test_accuracy"] for h in hist]
    sel = best.meta["selected_epoch"]
    assert sel == _first_argmax(accs)
    _assert_same(best.state_dict(), snaps[sel - 1])
    assert evaluate(best, Xte, yte) == pytest.approx(max(accs), abs=1e-12)
    for h, s in zip(hist, snaps):  # the recorded accuracies are those of the weights of each epoch
        m = models.build(common["arch"])
        m.load_state_dict(s)
        assert evaluate(m, Xte, yte) == pytest.approx(h["test_accuracy"], abs=1e-12)

    last, snaps_l = _fit_with_snapshots(TrainConfig(**common, selection="last"), data_dir, tmp_path / "l.pt",
                                        monkeypatch)
    assert last.meta["selected_epoch"] == 3 and last.meta["selected_on_test_set"] is False
    _assert_same(last.state_dict(), snaps_l[-1])
    _assert_same(snaps_l, snaps)  # selection does not change training


def test_selection_best_val_holds_out_a_validation_split(tmp_path, data_dir, monkeypatch):
    common = dict(arch="mlp-2x32-softplus", method="standard", epochs=3, lr=0.03, seed=1)
    best, snaps = _fit_with_snapshots(TrainConfig(**common, limit=300, selection="best-val"), data_dir,
                                      tmp_path / "bv.pt", monkeypatch)
    meta = best.meta
    assert meta["selected_on_test_set"] is False and meta["selection"] == "best-val"
    vals = [h["val_accuracy"] for h in meta["history"]]
    sel = meta["selected_epoch"]
    assert sel == _first_argmax(vals)
    _assert_same(best.state_dict(), snaps[sel - 1])

    # the validation split is the last min(val_size, N/5) = 60 of the 300 training images ...
    X, y = data.load_tensors("mnist", "train", data_dir=data_dir, limit=300)
    for h, s in zip(meta["history"], snaps):
        m = models.build(common["arch"])
        m.load_state_dict(s)
        assert evaluate(m, X[-60:], y[-60:]) == pytest.approx(h["val_accuracy"], abs=1e-12)
    # ... and is never trained on: training is that of a run on the first 240 images only
    _, snaps_240 = _fit_with_snapshots(TrainConfig(**common, limit=240, selection="last"), data_dir,
                                       tmp_path / "l240.pt", monkeypatch)
    _assert_same(snaps, snaps_240)


# ------------------------------------------------------------------------------- 9. checkpoint contents


def _tree_sha256(root: Path) -> str:
    """sha256 over sorted relative paths and per-file sha256 (the documented provenance hash of a directory)."""
    h = hashlib.sha256()
    for p in sorted(q for q in root.rglob("*") if q.is_file()):
        fh = hashlib.sha256(p.read_bytes()).hexdigest()
        h.update(p.relative_to(root).as_posix().encode() + b"\0" + fh.encode() + b"\n")
    return h.hexdigest()


def test_cli_checkpoint_contents_and_provenance(tmp_path, data_dir):
    out = tmp_path / "crt.pt"
    rc = cli.main(["train", "--arch", "mlp", "--depth", "2", "--width", "16", "--activation", "softplus",
                   "--method", "crt", "--gamma", "0.01", "--rho", "0.5", "--epochs", "1", "--limit", "200",
                   "--data-dir", str(data_dir), "--device", "cpu", "--no-progress", "--out", str(out)])
    assert rc == 0
    obj = torch.load(out, weights_only=True)

    assert obj["arch"]["kind"] == "mlp" and obj["arch"]["depth"] == 2 and obj["arch"]["width"] == 16
    assert obj["arch"]["activation"] == "softplus"
    sd = obj["state_dict"]
    assert {k: tuple(v.shape) for k, v in sd.items()} == {"fc1.weight": (16, 784), "fc1.bias": (16,),
                                                          "fc2.weight": (10, 16), "fc2.bias": (10,)}
    loaded = models.load(out)
    _assert_same(loaded.state_dict(), sd)

    ts = obj["train_state"]
    assert ts["epoch"] == 1
    _assert_same(ts["last_state_dict"], sd)  # selection "last" after one epoch
    opt = ts["optimizer"]
    assert len(opt["state"]) == 4  # one Adam state per parameter
    for st in opt["state"].values():
        assert int(st["step"]) == math.ceil(200 / 64)  # one step per batch
        assert {"exp_avg", "exp_avg_sq"} <= set(st)
    assert opt["param_groups"][0]["lr"] == 1e-3

    meta = obj["meta"]
    assert meta["method"] == "crt" and meta["gamma"] == 0.01 and meta["epochs"] == 1
    (h,) = meta["history"]
    assert set(h) >= {"loss", "ce", "K", "test_accuracy", "attack_success", "seconds", "epoch"}
    assert h["epoch"] == 1 and h["seconds"] > 0 and h["K"] > 0 and 0 <= h["attack_success"] <= 1
    assert h["loss"] == pytest.approx(h["ce"] + 0.01 * h["K"], rel=1e-5)
    Xte, yte = data.load_tensors("mnist", "test", data_dir=data_dir, limit=200)
    assert h["test_accuracy"] == pytest.approx(evaluate(loaded, Xte, yte), abs=1e-12)
    _assert_same(ts["history"], meta["history"], skip=())

    prov = meta["provenance"]
    assert prov["config"]["method"] == "crt" and prov["config"]["width"] == 16 and prov["config"]["limit"] == 200
    raw = Path(data_dir) / "MNIST" / "raw"
    assert Path(prov["inputs"]["data"]["path"]) == raw.resolve()
    assert prov["inputs"]["data"]["sha256"] == _tree_sha256(raw)
    assert prov["environment"]["torch"] == torch.__version__
    assert prov["sorobust"]["version"] == sorobust.__version__
    assert len(prov["sorobust"]["code_hash"]) == 64
    head = subprocess.run(["git", "-C", str(Path(sorobust.__file__).parent), "rev-parse", "HEAD"],
                          capture_output=True, text=True)
    if head.returncode == 0:
        assert prov["sorobust"]["git_commit"] == head.stdout.strip()
    assert prov["seeds"] == {"seed": 1}
    assert out.with_suffix(".json").is_file()
