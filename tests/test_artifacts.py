"""Tests for sorobust.artifacts."""

import hashlib
import json
import math
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from sorobust import artifacts
from sorobust.errors import SorobustError


def test_sha256_file(tmp_path):
    p = tmp_path / "f.bin"
    payload = bytes(range(256)) * 5000
    p.write_bytes(payload)
    assert artifacts.sha256_file(p) == hashlib.sha256(payload).hexdigest()
    assert artifacts.sha256_file(str(p)) == hashlib.sha256(payload).hexdigest()


def test_atomic_write_success_creates_parents(tmp_path):
    p = tmp_path / "a" / "b" / "out.txt"
    with artifacts.atomic_write(p) as f:
        f.write("hello\n")
        assert not p.exists()  # nothing visible until the block ends
    assert p.read_text() == "hello\n"
    assert [x.name for x in p.parent.iterdir()] == ["out.txt"]
    with artifacts.atomic_write(p, "wb") as f:
        f.write(b"\x00\x01")
    assert p.read_bytes() == b"\x00\x01"
    assert p.stat().st_mode & 0o777 == 0o666 & ~artifacts._UMASK


def test_atomic_write_exception_leaves_nothing(tmp_path):
    p = tmp_path / "sub" / "out.txt"
    with pytest.raises(RuntimeError):
        with artifacts.atomic_write(p) as f:
            f.write("partial")
            raise RuntimeError("boom")
    assert not p.exists()
    assert list(p.parent.iterdir()) == []


def test_atomic_write_exception_keeps_old_content(tmp_path):
    p = tmp_path / "out.txt"
    p.write_text("old")
    with pytest.raises(KeyboardInterrupt):
        with artifacts.atomic_write(p) as f:
            f.write("new")
            raise KeyboardInterrupt
    assert p.read_text() == "old"
    assert [x.name for x in tmp_path.iterdir()] == ["out.txt"]


def test_write_json_converts_and_sorts(tmp_path):
    p = tmp_path / "r.json"
    obj = {
        "b": np.float64(0.25),
        "a": np.int64(3),
        "t": torch.tensor(1.5),
        "v": torch.tensor([1, 2]),
        "arr": np.arange(3),
        "path": Path("/x/y"),
        "flag": np.bool_(True),
    }
    artifacts.write_json(p, obj)
    text = p.read_text()
    assert text.endswith("\n")
    back = json.loads(text)
    assert back == {"a": 3, "arr": [0, 1, 2], "b": 0.25, "flag": True, "path": "/x/y", "t": 1.5, "v": [1, 2]}
    assert list(back) == sorted(back)  # sort_keys
    assert '\n  "a": 3' in text  # indent=2


def test_write_json_unserialisable_writes_nothing(tmp_path):
    p = tmp_path / "r.json"
    with pytest.raises(TypeError):
        artifacts.write_json(p, {"x": object()})
    assert list(tmp_path.iterdir()) == []


def test_tsv_roundtrip(tmp_path):
    p = tmp_path / "t" / "res.tsv"
    rows = [
        {"i": 0, "radius": 0.1, "ok": True, "name": "a b", "none": None, "f32": np.float32(0.1), "extra": "ignored"},
        {"i": -7, "radius": 1 / 3, "ok": False, "name": "x", "none": None, "f32": torch.tensor(2.5), "extra": 1},
        {"i": np.int64(12), "radius": 1e-300, "ok": np.bool_(True), "name": "1e5x", "none": None,
         "f32": torch.tensor(1 / 3, dtype=torch.float32), "extra": 0},
        {"i": 3, "radius": float("inf"), "ok": torch.tensor(False), "name": "", "none": None, "f32": -0.0,
         "extra": 0},
        {"i": 4, "radius": float("nan"), "ok": 1, "name": "nan-ish", "none": None, "f32": 2.0, "extra": 0},
    ]
    cols = ["i", "radius", "ok", "name", "none", "f32"]
    artifacts.write_tsv(p, rows, cols)
    lines = p.read_text().split("\n")
    assert lines[0] == "\t".join(cols) and lines[-1] == ""
    assert len(lines) == len(rows) + 2
    back = artifacts.read_tsv(p)
    assert [r["i"] for r in back] == [0, -7, 12, 3, 4]
    assert all(isinstance(r["i"], int) for r in back)
    assert back[0]["radius"] == 0.1 and back[1]["radius"] == 1 / 3 and back[2]["radius"] == 1e-300
    assert back[3]["radius"] == math.inf and math.isnan(back[4]["radius"])
    assert [r["ok"] for r in back] == [1, 0, 1, 0, 1]
    assert [r["name"] for r in back] == ["a b", "x", "1e5x", None, "nan-ish"]
    assert all(r["none"] is None for r in back)
    # float32 values round-trip exactly at float32 precision
    assert np.float32(back[0]["f32"]) == np.float32(0.1)
    assert np.float32(back[2]["f32"]) == np.float32(1 / 3)
    assert back[1]["f32"] == 2.5 and back[4]["f32"] == 2.0
    assert set(back[0]) == set(cols)


def test_tsv_rejects_bad_rows(tmp_path):
    p = tmp_path / "bad.tsv"
    with pytest.raises(KeyError):
        artifacts.write_tsv(p, [{"a": 1}], ["a", "b"])
    with pytest.raises(ValueError):
        artifacts.write_tsv(p, [{"a": "x\ty"}], ["a"])
    with pytest.raises(TypeError):
        artifacts.write_tsv(p, [{"a": (1, 2)}], ["a"])
    assert list(tmp_path.iterdir()) == []
    artifacts.write_tsv(p, [], ["a", "b"])
    assert p.read_text() == "a\tb\n"
    assert artifacts.read_tsv(p) == []


def test_code_version():
    cv = artifacts.code_version()
    assert set(cv) == {"version", "git_commit", "git_dirty", "code_hash"}
    import sorobust

    assert cv["version"] == sorobust.__version__
    assert re.fullmatch(r"[0-9a-f]{64}", cv["code_hash"])
    assert cv["git_commit"] is None or re.fullmatch(r"[0-9a-f]{40}", cv["git_commit"])
    assert cv["git_dirty"] in (None, True, False)
    assert artifacts.code_version()["code_hash"] == cv["code_hash"]  # stable


def test_code_version_without_git(monkeypatch):
    def no_git(*a, **kw):
        raise FileNotFoundError("git")

    monkeypatch.setattr(subprocess, "run", no_git)
    cv = artifacts.code_version()
    assert cv["git_commit"] is None and cv["git_dirty"] is None
    assert re.fullmatch(r"[0-9a-f]{64}", cv["code_hash"])


def test_git_dirty_ignores_results(tmp_path, monkeypatch):
    """git_dirty is about the code: new outputs under the top-level results/ folder (the workflow writes them
    while it runs) leave it False; any other untracked or changed file makes it True."""
    repo = tmp_path / "repo"
    pkg = repo / "sorobust"
    pkg.mkdir(parents=True)
    (pkg / "m.py").write_text("x = 1\n")
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "c"], check=True)
    monkeypatch.setattr(artifacts, "_PKG_DIR", pkg)
    assert artifacts.code_version()["git_dirty"] is False
    (repo / "results" / "quick").mkdir(parents=True)
    (repo / "results" / "quick" / "rec.tsv").write_text("a\n")
    assert artifacts.code_version()["git_dirty"] is False
    (pkg / "m.py").write_text("x = 2\n")
    assert artifacts.code_version()["git_dirty"] is True
    (pkg / "m.py").write_text("x = 1\n")
    (repo / "notes.txt").write_text("n\n")
    assert artifacts.code_version()["git_dirty"] is True


def test_environment():
    env = artifacts.environment()
    for k in ("python", "torch", "torchvision", "numpy", "platform", "hostname", "device", "num_threads"):
        assert k in env
    assert env["torch"] == torch.__version__
    assert isinstance(env["num_threads"], int) and env["num_threads"] >= 1
    assert env["device"]


def test_provenance(tmp_path):
    inp = tmp_path / "model.pt"
    inp.write_bytes(b"weights" * 1000)
    config = {"eps": 0.5, "nested": {"k": [1, 2]}}
    rec = artifacts.provenance(
        "sorobust certify --x", config, inputs={"checkpoint": inp}, seeds={"torch": 0}, timings={"total_s": 1.25}
    )
    assert set(rec) == {"sorobust", "environment", "command", "config", "inputs", "seeds", "timings", "created"}
    assert rec["command"] == "sorobust certify --x"
    assert rec["config"] == config
    config["eps"] = 9  # the record is a snapshot
    assert rec["config"]["eps"] == 0.5
    assert rec["inputs"]["checkpoint"]["sha256"] == hashlib.sha256(b"weights" * 1000).hexdigest()
    assert Path(rec["inputs"]["checkpoint"]["path"]) == inp.resolve()
    assert rec["seeds"] == {"torch": 0} and rec["timings"] == {"total_s": 1.25}
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", rec["created"])
    out = tmp_path / "prov.json"
    artifacts.write_json(out, rec)
    assert json.loads(out.read_text()) == rec
    with pytest.raises(SorobustError):
        artifacts.provenance("c", {}, inputs={"missing": tmp_path / "nope"})


def test_write_json_is_strict_and_writes_nothing_it_cannot(tmp_path):
    """Strict JSON (issue 11): a non-finite float is refused before the file exists, so no artifact carries the
    NaN/Infinity the audit rejects."""
    out = tmp_path / "s.json"
    for bad in (float("nan"), float("inf"), -float("inf")):
        with pytest.raises(ValueError):
            artifacts.write_json(out, {"x": [1.0, {"y": bad}]})
        assert not out.exists() and not list(tmp_path.iterdir())
    artifacts.write_json(out, {"x": 1.5})
    assert json.loads(out.read_text()) == {"x": 1.5}
