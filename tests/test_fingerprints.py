"""Golden fingerprints guard the rerun triggers (issue 12).

Train, certify and attack jobs rerun when their stage's numerics version changes
(``sorobust.workflow.STAGE_VERSIONS``), not when their source text does. That is only safe if every change of the
numbers comes with a bump. This test runs a tiny deterministic job of every kind through the command line
(float32, the CLI's default dtype, on a few MNIST points) and compares the numbers it writes with those stored,
with the stage versions, in ``tests/fingerprints.json``:

- numbers changed, version not bumped → this test fails: bump ``STAGE_VERSIONS[stage]`` (the change alters what
  the stage computes, so the results must be recomputed) and update the file;
- version bumped → the file must be updated too, so the bump is deliberate.

The numbers are compared, not hashed: float32 arithmetic differs in its last bits between CPUs (vector widths,
FMA, the BLAS kernel chosen), and a tiny training amplifies that to ~10⁻⁶ relative, so a hash of rounded numbers
flips on another machine (it did: digests recorded on one CI machine failed on another). Each stored vector (a
tensor's first entries and its norm; a record column over the points) must agree to ``RTOL`` of its own scale,
integers, booleans and labels exactly: far looser than rounding noise, far tighter than any change of method.
Solver diagnostics that follow the iteration path (residual, iterations, converged, eta) are not fingerprinted.

Update with ``python tests/test_fingerprints.py --update`` (after bumping).
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch

FILE = Path(__file__).with_name("fingerprints.json")
TRAIN_METHODS = [("standard", []), ("crt", ["--gamma", "0.01"]), ("gamma", ["--gamma", "0.01"]),
                 ("pgd", ["--pgd-steps", "3"]), ("trades", ["--pgd-steps", "3"]), ("crown-ibp", []),
                 ("coap", ["--proj", "0"])]
CERTIFY = [("crc", ["--targets", "all"]), ("crc", ["--targets", "runner-up"]),
           ("crc", ["--targets", "all", "--curvature", "local"]), ("crown", []), ("ibp", []), ("crown-ibp", [])]
ATTACKS = [("pgd", ["--targets", "runner-up"]), ("pgd", ["--targets", "all"]), ("second-order", []),
           ("autoattack", ["--aa-version", "apgd"])]


RTOL = 1e-3  # of a vector's largest magnitude
RECORD_COLUMNS = ["label", "pred", "correct", "target", "certificate", "certificate_reference", "f", "m",
                  "M", "pred_adv", "distance", "success", "robust", "robust_reference", "dual_bound"]


def _value(v):
    """A JSON-safe value: non-finite floats as strings (compared exactly)."""
    if isinstance(v, float) and not math.isfinite(v):
        return repr(v)
    return v


def _records(path: Path) -> dict:
    """{column: [value per point]} of a record file, for the columns of :data:`RECORD_COLUMNS` it has."""
    from sorobust.artifacts import read_tsv

    rows = read_tsv(path)
    return {c: [_value(r[c]) for r in rows] for c in RECORD_COLUMNS if rows and c in rows[0]}


def _differences(stored, got, where="") -> list:
    """Where ``got`` departs from ``stored``: vectors of floats beyond RTOL of their scale, anything else unequal."""
    if isinstance(stored, dict) and isinstance(got, dict):
        out = [f"{where}/{k}: {'new' if k not in stored else 'gone'}" for k in sorted(set(stored) ^ set(got))]
        for k in sorted(set(stored) & set(got)):
            out += _differences(stored[k], got[k], f"{where}/{k}")
        return out
    if isinstance(stored, list) and isinstance(got, list) and len(stored) == len(got):
        floats = [(a, b) for a, b in zip(stored, got) if isinstance(a, float) and isinstance(b, float)]
        exact = [(a, b) for a, b in zip(stored, got) if not (isinstance(a, float) and isinstance(b, float))]
        if any(a != b for a, b in exact):
            return [f"{where}: {sum(a != b for a, b in exact)} exact entries differ"]
        if floats:
            scale = max(abs(a) for a, _ in floats)
            dev = max(abs(a - b) for a, b in floats)
            if dev > RTOL * scale + 1e-12:
                return [f"{where}: deviates by {dev:.3g} (scale {scale:.3g})"]
        return []
    return [] if stored == got else [f"{where}: {stored!r} -> {got!r}"]


def fingerprints(tmp: Path, data_dir) -> dict:
    """{stage: numbers} of tiny train, certify and attack runs through ``sorobust.cli.main``."""
    from sorobust import cli, models

    torch.set_num_threads(1)
    common = ["--data-dir", str(data_dir), "--no-progress", "--device", "cpu"]
    train = {}
    for method, extra in TRAIN_METHODS:
        out = tmp / f"{method}.pt"
        rc = cli.main(["train", "--arch", "mlp-2x16-softplus" if method != "coap" else "mlp-2x16-relu",
                       "--method", method, "--epochs", "1", "--limit", "256", "--batch-size", "64", "--rho", "0.5",
                       "--out", str(out), *common, *extra])
        assert rc == 0, method
        sd = models.load(out).state_dict()
        train[method] = {k: [float(x) for x in v.flatten()[:16]] + [float(v.double().norm())]
                         for k, v in sd.items()}
    ckpt = {"softplus": tmp / "crt.pt", "relu": tmp / "coap.pt"}
    certify = {}
    for method, extra in CERTIFY + [("coap", [])]:
        net = "relu" if method == "coap" else "softplus"
        out = tmp / f"c-{method}-{len(certify)}.tsv"
        assert cli.main(["certify", "--checkpoint", str(ckpt[net]), "--method", method, "--rho", "0.5", "--limit",
                         "12", "--out", str(out), *common, *extra]) == 0, method
        certify[f"{method}{extra}"] = _records(out)
    attack = {}
    for method, extra in ATTACKS:
        out = tmp / f"a-{method}-{len(attack)}.tsv"
        assert cli.main(["attack", "--checkpoint", str(ckpt["softplus"]), "--method", method, "--rho", "0.5",
                         "--limit", "8", "--out", str(out), *common, *extra]) == 0, method
        attack[f"{method}{extra}"] = _records(out)
    return {"train": train, "certify": certify, "attack": attack}


def test_numbers_change_only_with_a_version_bump(tmp_path, data_dir):
    from sorobust.workflow import STAGE_VERSIONS

    stored = json.loads(FILE.read_text())
    got = fingerprints(tmp_path, data_dir)
    problems = []
    for stage, values in got.items():
        rec = stored.get(stage, {})
        if rec.get("version") != STAGE_VERSIONS[stage]:
            problems.append(f"{stage}: STAGE_VERSIONS says v{STAGE_VERSIONS[stage]}, {FILE.name} v{rec.get('version')}"
                            f"; run `python tests/test_fingerprints.py --update` to record the bump")
            continue
        diff = _differences(rec.get("values"), values, stage)
        if diff:
            problems.append(f"{stage}: its numbers changed ({'; '.join(diff[:5])}{' …' if len(diff) > 5 else ''}) "
                            f"but STAGE_VERSIONS[{stage!r}] is still {STAGE_VERSIONS[stage]}: bump it, then run "
                            f"`python tests/test_fingerprints.py --update`")
    assert not problems, "\n".join(problems)


def test_comparison_tolerates_rounding_noise_not_a_change():
    stored = {"t": {"w": [1.0, -0.5, 2.0, 3.0], "pred": [1, 2], "ok": [True, False], "c": [0.0, "inf"]}}
    noisy = json.loads(json.dumps(stored))
    noisy["t"]["w"] = [x * (1 + 3e-6) for x in stored["t"]["w"]]
    assert _differences(stored, noisy) == []
    for path, value in ((("w", 1), -0.51), (("pred", 0), 3), (("ok", 1), True), (("c", 1), "nan")):
        changed = json.loads(json.dumps(stored))
        changed["t"][path[0]][path[1]] = value
        assert len(_differences(stored, changed)) == 1, path
    assert _differences(stored, {"t": {**stored["t"], "new": [1.0]}}) == ["/t/new: new"]


if __name__ == "__main__" and "--update" in sys.argv:
    import os
    import tempfile

    from sorobust.workflow import STAGE_VERSIONS

    data_dir = os.environ.get("SOROBUST_DATA_DIR", str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    with tempfile.TemporaryDirectory() as d:
        got = fingerprints(Path(d), data_dir)
    FILE.write_text(json.dumps({s: {"version": STAGE_VERSIONS[s], "values": g} for s, g in got.items()},
                               sort_keys=True) + "\n")
    print(f"wrote {FILE}: {', '.join(f'{s} v{STAGE_VERSIONS[s]}' for s in got)}")
elif __name__ == "__main__":
    pytest.main([__file__, "-q"])
