"""End-to-end checks of the command line: train → certify → attack on a few real MNIST points, resumption,
and one-line errors. Numbers in the records are checked against an independent recomputation."""

import json
from pathlib import Path

import pytest
import torch

from sorobust import cli, data, models
from sorobust.artifacts import read_tsv, sha256_file
from sorobust.certify import crc


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data_dir):
    out = tmp_path_factory.mktemp("cli") / "model.pt"
    rc = cli.main(["train", "--arch", "mlp-2x32-softplus", "--epochs", "1", "--limit", "600",
                   "--data-dir", str(data_dir), "--out", str(out), "--no-progress"])
    assert rc == 0
    return out


def test_train_writes_checkpoint_and_provenance(trained):
    model = models.load(trained)
    assert model.arch["depth"] == 2 and model.arch["width"] == 32
    assert model.meta["method"] == "standard" and model.meta["epochs"] == 1
    summary = json.loads(trained.with_suffix(".json").read_text())
    assert summary["provenance"]["config"]["arch"] == "mlp-2x32-softplus"
    assert not Path(str(trained) + ".resume").exists()


def test_certify_records_match_api(trained, data_dir, tmp_path):
    out = tmp_path / "crc.tsv"
    rc = cli.main(["certify", "--checkpoint", str(trained), "--rho", "0.3", "--limit", "30",
                   "--data-dir", str(data_dir),
                   "--targets", "runner-up", "--dtype", "float64", "--batch-size", "16", "--out", str(out),
                   "--no-progress"])
    assert rc == 0
    rows = read_tsv(out)
    assert [r["idx"] for r in rows] == list(range(30))
    model = models.load(trained).double()
    X, y = data.load_tensors("mnist", "test", data_dir=data_dir, limit=30)
    res = crc(model, X.double(), y, targets="runner-up")
    pred = model(X.double()).argmax(1)
    for r, c, p, lab in zip(rows, res.certificate.tolist(), pred.tolist(), y.tolist()):
        assert r["label"] == lab and r["pred"] == p and r["correct"] == int(p == lab)
        assert abs(r["certificate"] - c) <= 1e-9
        assert "certified" not in r  # records hold radii; ρ belongs to the summary and the tables
    summary = json.loads(out.with_suffix(".json").read_text())
    assert summary["n_points"] == 30
    here = sum(r["correct"] == 1 and r["certificate"] > 0.3 and r["converged"] == 1 for r in rows) / 30
    assert abs(summary["certified_accuracy_at"]["0.3"] - here) < 1e-12
    prov = summary["provenance"]
    assert prov["inputs"]["checkpoint"]["sha256"] == sha256_file(trained)
    assert prov["config"]["targets"] == "runner-up"
    assert summary["protocol"]["sound"] is False
    assert not Path(str(out) + ".partial").exists()


def test_certify_resumes_from_partial(trained, data_dir, tmp_path, monkeypatch):
    out = tmp_path / "crc.tsv"
    args = ["certify", "--checkpoint", str(trained), "--rho", "0.3", "--limit", "20", "--data-dir", str(data_dir),
            "--batch-size", "5", "--out", str(out), "--no-progress"]
    calls = []
    import sorobust.certify as certify_pkg

    orig = certify_pkg.crc

    def interrupting(*a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return orig(*a, **k)

    monkeypatch.setattr(certify_pkg, "crc", interrupting)
    assert cli.main(args) == 130
    assert not out.exists()
    partial = read_tsv(Path(str(out) + ".partial"))
    assert len(partial) == 10
    calls.clear()
    monkeypatch.setattr(certify_pkg, "crc", lambda *a, **k: (calls.append(1), orig(*a, **k))[1])
    assert cli.main(args) == 0
    assert len(calls) == 2  # only the two missing batches
    assert [r["idx"] for r in read_tsv(out)] == list(range(20))


def test_attack_pgd_and_second_order(trained, data_dir, tmp_path):
    for method in ("pgd", "second-order"):
        out = tmp_path / f"{method}.tsv"
        assert cli.main(["attack", "--checkpoint", str(trained), "--method", method, "--rho", "0.5", "--limit", "10",
                         "--data-dir", str(data_dir), "--out", str(out), "--no-progress"]) == 0
        rows = read_tsv(out)
        assert len(rows) == 10
        for r in rows:
            if method == "pgd":
                assert r["distance"] <= 0.5 + 1e-5
            assert r["robust"] <= r["correct"]
        s = json.loads(out.with_suffix(".json").read_text())
        assert abs(s["empirical_robust_accuracy"] - sum(r["robust"] for r in rows) / 10) < 1e-12


def test_errors_are_one_line(trained, data_dir, tmp_path, capsys):
    rc = cli.main(["certify", "--checkpoint", str(tmp_path / "missing.pt"), "--rho", "0.5", "--out",
                   str(tmp_path / "x.tsv"), "--data-dir", str(data_dir)])
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err and "missing.pt" in err
    rc = cli.main(["certify", "--checkpoint", str(trained), "--arch", "mlp-3x32-softplus", "--rho", "0.5", "--out",
                   str(tmp_path / "x.tsv"), "--data-dir", str(data_dir)])
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert "mlp-2x32-softplus" in err and "\n" not in err
    assert not (tmp_path / "x.tsv").exists()
    bad = models.load(trained)
    with torch.no_grad():
        bad.fc1.weight[0, 0] = float("nan")
    models.save(bad, tmp_path / "nan.pt")
    rc = cli.main(["certify", "--checkpoint", str(tmp_path / "nan.pt"), "--rho", "0.5", "--out",
                   str(tmp_path / "x.tsv"), "--data-dir", str(data_dir)])
    assert rc == 2 and "NaN" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["train", "certify", "attack"])
def test_help(command, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main([command, "--help"])
    assert e.value.code == 0
    assert "usage" in capsys.readouterr().out


@pytest.mark.parametrize("method", ["crown", "ibp", "crown-ibp"])
def test_certify_baselines_records_match_api(method, trained, data_dir, tmp_path):
    from sorobust.certify import crown

    out = tmp_path / f"{method}.tsv"
    assert cli.main(["certify", "--checkpoint", str(trained), "--method", method, "--rho", "0.2", "--limit", "8",
                     "--dtype", "float64", "--data-dir", str(data_dir), "--out", str(out), "--no-progress"]) == 0
    rows = read_tsv(out)
    model = models.load(trained).double()
    X, y = data.load_tensors("mnist", "test", data_dir=data_dir, limit=8)
    radius = crown.certified_radius(model, X.double(), y, targets="all", method=method)["radius"]
    for r, rad in zip(rows, radius.tolist()):
        assert abs(r["certificate"] - rad) <= 1e-12
    summary = json.loads(out.with_suffix(".json").read_text())
    assert summary["protocol"]["method"] == method
    here = sum(r["correct"] == 1 and rad > 0.2 for r, rad in zip(rows, radius.tolist())) / 8
    assert abs(summary["certified_accuracy_at"]["0.2"] - here) < 1e-12


def test_cnn_cert_needs_a_conv_net(trained, data_dir, tmp_path, capsys):
    assert cli.main(["certify", "--checkpoint", str(trained), "--method", "cnn-cert", "--rho", "0.2",
                     "--data-dir", str(data_dir), "--out", str(tmp_path / "x.tsv")]) == 2
    assert "conv net" in capsys.readouterr().err


# ------------------------------------------------------------------- bad inputs: one line, exit 2, nothing written
_BAD = [  # (argv after the command's required options, the words the one line must hold)
    (["certify", "--rho", "-1"], "--rho -1.0: must be a finite number > 0"),
    (["certify", "--rho", "nan"], "--rho nan"),
    (["certify", "--rho", "inf"], "--rho inf"),
    (["certify", "--rho", "0"], "--rho 0.0: must be a finite number > 0"),
    (["certify", "--rho", "0.5", "--limit", "0"], "--limit 0: must be at least 1"),
    (["certify", "--rho", "0.5", "--batch-size", "0"], "--batch-size 0: must be at least 1"),
    (["attack", "--rho", "-0.5"], "--rho -0.5"),
    (["train", "--width", "0"], "--width 0: must be at least 1"),
    (["train", "--rho", "nan"], "--rho nan"),
    (["train", "--epochs", "0"], "--epochs 0"),
    (["certify", "--rho", "0.5", "OUT=DIR"], "is a directory"),
    (["certify", "--rho", "0.5", "OUT=CHECKPOINT"], "is also the input --checkpoint"),
    (["certify", "--rho", "0.5", "DATA=label-200"], "checksum mismatch for"),
    (["certify", "--rho", "0.5", "CKPT=junk-arch"], "stored architecture: width 'wide' is not an integer"),
    (["certify", "--rho", "0.5", "CKPT=no-state-dict"], "has no state_dict"),
    (["certify", "--rho", "0.5", "CKPT=width-2e9"], "width 2000000000.0 is not an integer"),
    (["attack", "--rho", "0.5", "CKPT=width-2e9-int"], "width 2000000000 is out of range"),
    (["certify", "--rho", "0.5", "CKPT=truncated"], "truncated or corrupt"),
]


def _rewrite_checkpoint(change):
    """A corruption of the copied checkpoint: ``change`` applied to its payload."""

    def corrupt(ckpt, tmp_path, data_dir):
        """Rewrite the checkpoint; no extra arguments."""
        payload = torch.load(ckpt, weights_only=True)
        change(payload)
        torch.save(payload, ckpt)
        return []

    return corrupt


def _truncate_checkpoint(ckpt, tmp_path, data_dir):
    """The checkpoint without its last 100 bytes."""
    ckpt.write_bytes(ckpt.read_bytes()[:-100])
    return []


def _label_200(ckpt, tmp_path, data_dir):
    """A data dir whose test labels hold a 200 (train files linked to the genuine ones)."""
    raw = tmp_path / "data" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for f in data._RAW_FILES:
        src = data_dir / "MNIST" / "raw" / f
        if f.startswith("t10k"):
            (raw / f).write_bytes(src.read_bytes())
        else:
            (raw / f).symlink_to(src)
    labels = bytearray((raw / "t10k-labels-idx1-ubyte").read_bytes())
    labels[8 + 5] = 200
    (raw / "t10k-labels-idx1-ubyte").write_bytes(bytes(labels))
    return ["--data-dir", str(tmp_path / "data")]


_CORRUPT = {  # token in a _BAD row -> corruption of its inputs, returning extra arguments
    "DATA=label-200": _label_200,
    "CKPT=junk-arch": _rewrite_checkpoint(lambda p: p["arch"].update(width="wide")),
    "CKPT=no-state-dict": _rewrite_checkpoint(lambda p: p.pop("state_dict")),
    "CKPT=width-2e9": _rewrite_checkpoint(lambda p: p["arch"].update(width=2e9)),
    "CKPT=width-2e9-int": _rewrite_checkpoint(lambda p: p["arch"].update(width=2_000_000_000)),
    "CKPT=truncated": _truncate_checkpoint,
}


@pytest.mark.parametrize("argv,words", _BAD, ids=[" ".join(a) for a, _ in _BAD])
def test_bad_input_one_line_exit_2_nothing_written(trained, data_dir, tmp_path, capsys, argv, words):
    ckpt = tmp_path / "model.pt"
    ckpt.write_bytes(trained.read_bytes())
    argv = list(argv)
    for token in [a for a in argv if a in _CORRUPT]:
        argv.remove(token)
        argv += _CORRUPT[token](ckpt, tmp_path, data_dir)
    before = ckpt.read_bytes()
    out = tmp_path / "out" / "r.tsv"
    if "OUT=DIR" in argv:
        argv.remove("OUT=DIR")
        out = tmp_path
    if "OUT=CHECKPOINT" in argv:
        argv.remove("OUT=CHECKPOINT")
        out = ckpt
    cmd = argv[0]
    if cmd == "train":
        argv = argv + ["--arch", "mlp-2x8-softplus", "--out", str(out)]
    else:
        argv = argv + ["--checkpoint", str(ckpt), "--out", str(out)]
    listing = sorted(p for p in tmp_path.rglob("*"))
    rc = cli.main(argv + ["--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert len(err) == 1 and err[0].startswith("error: ") and words in err[0], err
    assert sorted(p for p in tmp_path.rglob("*")) == listing  # nothing written, nothing half-written
    assert ckpt.read_bytes() == before
