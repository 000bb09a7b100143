"""Resumption keyed by content (issue 11): a ``.partial`` is reused only if the checkpoint's and the data's sha256,
the numerics version and every option match; otherwise the run starts afresh and says so in one line. A torn or
truncated ``.partial`` is set aside (renamed, not deleted) and the run restarts, again in one line.

Every check compares the resumed run's records with an uninterrupted run on the final inputs (float64, so the
certificates are reproducible): a resumed file that mixed two models or two datasets would differ."""

import shutil
from pathlib import Path

import pytest
import torch

import sorobust.certify as certify_pkg
from sorobust import cli, models, workflow
from sorobust.artifacts import read_tsv

NUMERIC = ["idx", "label", "pred", "correct", "target", "certificate", "exact", "eta", "f", "m", "M"]


@pytest.fixture(scope="module")
def two_models(tmp_path_factory, data_dir):
    """Two different small checkpoints (seeds 1 and 2)."""
    d = tmp_path_factory.mktemp("resume")
    paths = []
    for seed in (1, 2):
        out = d / f"model{seed}.pt"
        assert cli.main(["train", "--arch", "mlp-2x16-softplus", "--epochs", "1", "--limit", "500", "--seed",
                         str(seed), "--data-dir", str(data_dir), "--out", str(out), "--no-progress"]) == 0
        paths.append(out)
    return paths


def _args(ckpt, out, data_dir, *extra):
    return ["certify", "--checkpoint", str(ckpt), "--rho", "0.3", "--limit", "20", "--data-dir", str(data_dir),
            "--dtype", "float64", "--batch-size", "5", "--out", str(out), "--no-progress", *extra]


def _interrupt_after(monkeypatch, n_batches):
    """Make the next certify run stop with KeyboardInterrupt after ``n_batches`` batches."""
    orig, calls = certify_pkg.crc, []

    def interrupting(*a, **k):
        calls.append(1)
        if len(calls) > n_batches:
            raise KeyboardInterrupt
        return orig(*a, **k)

    monkeypatch.setattr(certify_pkg, "crc", interrupting)
    return lambda: monkeypatch.setattr(certify_pkg, "crc", orig)


def _numbers(path):
    return [{k: r[k] for k in NUMERIC} for r in read_tsv(path)]


def _stderr_lines(capsys):
    return [line for line in capsys.readouterr().err.splitlines() if line.strip()]


def test_replaced_checkpoint_is_not_mixed(two_models, data_dir, tmp_path, monkeypatch, capsys):
    ckpt = tmp_path / "model.pt"
    shutil.copy(two_models[0], ckpt)
    out = tmp_path / "crc.tsv"
    restore = _interrupt_after(monkeypatch, 2)
    assert cli.main(_args(ckpt, out, data_dir)) == 130
    restore()
    assert len(read_tsv(Path(str(out) + ".partial"))) == 10
    shutil.copy(two_models[1], ckpt)  # same path, other model
    capsys.readouterr()
    assert cli.main(_args(ckpt, out, data_dir)) == 0
    notes = _stderr_lines(capsys)
    assert len(notes) == 1 and "starting afresh" in notes[0] and "checkpoint" in notes[0]
    ref = tmp_path / "ref.tsv"
    assert cli.main(_args(two_models[1], ref, data_dir)) == 0
    assert _numbers(out) == _numbers(ref)
    assert _numbers(out) != _numbers(_run_fresh(two_models[0], tmp_path, data_dir))


def _run_fresh(ckpt, tmp_path, data_dir):
    out = tmp_path / f"fresh-{ckpt.stem}.tsv"
    assert cli.main(_args(ckpt, out, data_dir)) == 0
    return out


def test_changed_data_files_are_not_mixed(two_models, data_dir, tmp_path, monkeypatch, capsys):
    local = tmp_path / "data"
    shutil.copytree(Path(data_dir) / "MNIST", local / "MNIST")
    out = tmp_path / "crc.tsv"
    restore = _interrupt_after(monkeypatch, 2)
    assert cli.main(_args(two_models[0], out, local)) == 130
    restore()
    (local / "MNIST" / "raw" / "README").write_text("a file the first run did not see\n")
    capsys.readouterr()
    assert cli.main(_args(two_models[0], out, local)) == 0
    notes = _stderr_lines(capsys)
    assert len(notes) == 1 and "starting afresh" in notes[0] and "data" in notes[0]


@pytest.mark.parametrize("change", ["code", "option"])
def test_changed_code_or_options_start_afresh(change, two_models, data_dir, tmp_path, monkeypatch, capsys):
    out = tmp_path / "crc.tsv"
    restore = _interrupt_after(monkeypatch, 2)
    assert cli.main(_args(two_models[0], out, data_dir)) == 130
    restore()
    extra = []
    if change == "code":
        monkeypatch.setitem(workflow.STAGE_VERSIONS, "certify", workflow.STAGE_VERSIONS["certify"] + 1)
    else:
        extra = ["--targets", "runner-up"]
    capsys.readouterr()
    assert cli.main(_args(two_models[0], out, data_dir, *extra)) == 0
    notes = _stderr_lines(capsys)
    assert len(notes) == 1 and "starting afresh" in notes[0]
    assert ("code version" in notes[0]) if change == "code" else ("--targets" in notes[0])


def test_same_inputs_resume(two_models, data_dir, tmp_path, monkeypatch, capsys):
    out = tmp_path / "crc.tsv"
    restore = _interrupt_after(monkeypatch, 2)
    assert cli.main(_args(two_models[0], out, data_dir)) == 130
    restore()
    calls, orig = [], certify_pkg.crc
    monkeypatch.setattr(certify_pkg, "crc", lambda *a, **k: (calls.append(1), orig(*a, **k))[1])
    capsys.readouterr()
    assert cli.main(_args(two_models[0], out, data_dir)) == 0
    assert len(calls) == 2  # only the two missing batches
    notes = _stderr_lines(capsys)
    assert len(notes) == 1 and "resuming" in notes[0] and "10 of 20" in notes[0]
    assert _numbers(out) == _numbers(_run_fresh(two_models[0], tmp_path, data_dir))


@pytest.mark.parametrize("damage", ["torn-row", "garbage", "key-file-missing", "key-file-garbage"])
def test_corrupt_partial_is_set_aside(damage, two_models, data_dir, tmp_path, monkeypatch, capsys):
    out = tmp_path / "crc.tsv"
    restore = _interrupt_after(monkeypatch, 2)
    assert cli.main(_args(two_models[0], out, data_dir)) == 130
    restore()
    partial, meta = Path(str(out) + ".partial"), Path(str(out) + ".partial.json")
    if damage == "torn-row":
        text = partial.read_text()
        partial.write_text(text[: len(text) - 40])  # the last row cut in the middle
    elif damage == "garbage":
        partial.write_bytes(b"\x00\xff not a table \n\x01")
    elif damage == "key-file-missing":
        meta.unlink()
    else:
        meta.write_text('{"key": ')
    capsys.readouterr()
    assert cli.main(_args(two_models[0], out, data_dir)) == 0
    notes = _stderr_lines(capsys)
    assert len(notes) == 1 and "set aside" in notes[0] and "starting afresh" in notes[0]
    aside = list(tmp_path.glob("crc.tsv.partial.corrupt-*"))
    assert len(aside) == 1  # renamed, never deleted
    assert _numbers(out) == _numbers(_run_fresh(two_models[0], tmp_path, data_dir))


# --------------------------------------------------------------------------------------------- training


def _train_args(out, data_dir, epochs=2, *extra):
    return ["train", "--arch", "mlp-2x16-softplus", "--epochs", str(epochs), "--limit", "300", "--data-dir",
            str(data_dir), "--out", str(out), "--no-progress", *extra]


@pytest.fixture
def one_epoch_partial(tmp_path, data_dir, monkeypatch):
    """A training run interrupted after its first of two epochs (``model.pt.partial`` on disk)."""
    from sorobust import train

    out = tmp_path / "model.pt"
    orig = train.Trainer.run_epoch

    def stop_second(self):
        if self.epoch == 1:
            raise KeyboardInterrupt
        return orig(self)

    monkeypatch.setattr(train.Trainer, "run_epoch", stop_second)
    assert cli.main(_train_args(out, data_dir)) == 130
    monkeypatch.setattr(train.Trainer, "run_epoch", orig)
    assert Path(str(out) + ".partial").is_file()
    return out


def test_train_resumes_same_content(one_epoch_partial, data_dir, tmp_path, capsys):
    capsys.readouterr()
    assert cli.main(_train_args(one_epoch_partial, data_dir)) == 0
    notes = _stderr_lines(capsys)
    assert len(notes) == 1 and "resuming" in notes[0] and "after epoch 1 of 2" in notes[0]
    ref = tmp_path / "ref.pt"
    assert cli.main(_train_args(ref, data_dir)) == 0
    a, b = models.load(one_epoch_partial), models.load(ref)
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))


def test_train_other_data_starts_afresh(one_epoch_partial, data_dir, tmp_path, capsys):
    local = tmp_path / "data"
    shutil.copytree(Path(data_dir) / "MNIST", local / "MNIST")
    (local / "MNIST" / "raw" / "README").write_text("a file the first run did not see\n")
    capsys.readouterr()
    assert cli.main(_train_args(one_epoch_partial, local)) == 0
    notes = _stderr_lines(capsys)
    assert len(notes) == 1 and "starting afresh" in notes[0] and "data" in notes[0]
    assert models.load(one_epoch_partial).meta["epochs"] == 2


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_train_corrupt_partial_is_set_aside(damage, one_epoch_partial, data_dir, tmp_path, capsys):
    partial = Path(str(one_epoch_partial) + ".partial")
    blob = partial.read_bytes()
    partial.write_bytes(blob[: len(blob) // 2] if damage == "truncated" else b"not a checkpoint")
    capsys.readouterr()
    assert cli.main(_train_args(one_epoch_partial, data_dir)) == 0
    notes = _stderr_lines(capsys)
    assert len(notes) == 1 and "set aside" in notes[0] and "starting afresh" in notes[0]
    assert len(list(tmp_path.glob("model.pt.partial.corrupt-*"))) == 1
    ref = tmp_path / "ref.pt"
    assert cli.main(_train_args(ref, data_dir)) == 0
    a, b = models.load(one_epoch_partial), models.load(ref)
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
