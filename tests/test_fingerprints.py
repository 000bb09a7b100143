"""Golden fingerprints guard the rerun triggers (issue 12).

Train, certify and attack jobs rerun when their stage's numerics version changes
(``sorobust.workflow.STAGE_VERSIONS``), not when their source text does. That is only safe if every change of the
numbers comes with a bump. This test runs a tiny deterministic job of every kind through the command line
(float32, the CLI's default dtype, on a few MNIST points) and hashes the numbers it writes, rounded to 6
significant digits (robust to the last-bit differences between CPUs, not to a change of method). The hashes are
stored with the stage versions in ``tests/fingerprints.json``:

- numbers changed, version not bumped → this test fails: bump ``STAGE_VERSIONS[stage]`` (the change alters what
  the stage computes, so the results must be recomputed) and update the file;
- version bumped → the file must be updated too, so the bump is deliberate.

Update with ``python tests/test_fingerprints.py --update`` (after bumping).
"""

from __future__ import annotations

import hashlib
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


def _round(v):
    """6 significant digits; integers and non-numbers unchanged."""
    if isinstance(v, float):
        if not math.isfinite(v) or v == 0.0:
            return repr(v)
        return f"{v:.6g}"
    return v


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def _records(path: Path) -> list:
    from sorobust.artifacts import read_tsv

    return [{k: _round(v) for k, v in r.items() if k != "time_s"} for r in read_tsv(path)]


def fingerprints(tmp: Path, data_dir) -> dict:
    """{stage: digest} of tiny train, certify and attack runs through ``sorobust.cli.main``."""
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
        train[method] = {k: [_round(float(x)) for x in v.flatten()[:64]] + [_round(float(v.double().sum()))]
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
    return {"train": _digest(train), "certify": _digest(certify), "attack": _digest(attack)}


def test_numbers_change_only_with_a_version_bump(tmp_path, data_dir):
    from sorobust.workflow import STAGE_VERSIONS

    stored = json.loads(FILE.read_text())
    got = fingerprints(tmp_path, data_dir)
    problems = []
    for stage, digest in got.items():
        rec = stored.get(stage, {})
        if rec.get("version") != STAGE_VERSIONS[stage]:
            problems.append(f"{stage}: STAGE_VERSIONS says v{STAGE_VERSIONS[stage]}, {FILE.name} v{rec.get('version')}"
                            f"; run `python tests/test_fingerprints.py --update` to record the bump")
        elif rec.get("digest") != digest:
            problems.append(f"{stage}: its numbers changed (fingerprint {rec.get('digest')} -> {digest}) but "
                            f"STAGE_VERSIONS[{stage!r}] is still {STAGE_VERSIONS[stage]}: bump it, then run "
                            f"`python tests/test_fingerprints.py --update`")
    assert not problems, "\n".join(problems)


if __name__ == "__main__" and "--update" in sys.argv:
    import os
    import tempfile

    from sorobust.workflow import STAGE_VERSIONS

    data_dir = os.environ.get("SOROBUST_DATA_DIR", str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    with tempfile.TemporaryDirectory() as d:
        got = fingerprints(Path(d), data_dir)
    FILE.write_text(json.dumps({s: {"version": STAGE_VERSIONS[s], "digest": g} for s, g in got.items()},
                               indent=1, sort_keys=True) + "\n")
    print(f"wrote {FILE}: {got}")
elif __name__ == "__main__":
    pytest.main([__file__, "-q"])
