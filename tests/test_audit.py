"""``sorobust audit`` is complete and runs from anywhere (issue 11): fault injection on a copy of the committed
``results/smoke``, the committed folders audited from ``/`` and from the repository root, strict JSON, the
summaries recomputed from their records, and the non-finite numbers the schemas refuse."""

import copy
import json
import re
import shutil
from pathlib import Path

import pytest

from sorobust import audit as audit_mod
from sorobust import cli, summaries
from sorobust.artifacts import read_tsv

ROOT = Path(__file__).resolve().parents[1]
CRC = "certify/mlp-2x16-sigmoid/crt-g0.01-r0.5-e1-n2000-s1/crc-global-all-n20"
ATTACK = "attack/mlp-2x16-sigmoid/pgd-g0-r0.5-e1-n2000-s1/pgd-all-r0.5-n20"
CURVATURE = "curvature/mlp-2x16-sigmoid/crt-g0-r0.5-e1-n2000-s1/K-n5"


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    """One copy of the committed smoke results laid out as in the repository (``results/smoke`` beside
    ``config/published.tsv``), made once per module."""
    base = tmp_path_factory.mktemp("repo")
    shutil.copytree(ROOT / "results" / "smoke", base / "results" / "smoke")
    (base / "config").mkdir()
    for name in ("published.tsv", "published_sound.tsv"):  # the tables' recorded relative inputs
        shutil.copy(ROOT / "config" / name, base / "config" / name)
    return base


@pytest.fixture
def smoke(pristine, tmp_path) -> Path:
    """A fresh copy of ``pristine`` to damage; returns its results folder."""
    shutil.copytree(pristine, tmp_path / "repo")
    return tmp_path / "repo" / "results" / "smoke"


def _edit_json(path: Path, fn) -> None:
    """Apply ``fn`` to the JSON object in ``path`` and write it back as the CLI does (sorted, indented)."""
    obj = json.loads(path.read_text())
    fn(obj)
    path.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def _nonfinite(path: Path, key: str, token: str) -> None:
    """Replace the number after ``"key": `` in ``path`` by the bare token (``NaN``, ``Infinity``), as
    Python's json writes a non-finite float."""
    text, n = re.subn(rf'("{key}": )[-0-9.eE+]+', rf"\g<1>{token}", path.read_text(), count=1)
    assert n == 1, key
    path.write_text(text)


def _set(key, value):
    """A JSON edit setting ``obj[key] = value``."""
    return lambda obj: obj.__setitem__(key, value)


# ----------------------------------------------------------------------------------- runs from anywhere


@pytest.mark.parametrize("profile", ["smoke", "quick"])
def test_committed_results_audit_clean_from_root_and_from_slash(profile, monkeypatch):
    """The committed folders pass from ``/`` (where the recorded ``config/published.tsv`` is not a relative path
    of the working directory) and from the repository root, as ``sorobust audit`` and as a function."""
    folder = ROOT / "results" / profile
    for cwd in ("/", ROOT):
        monkeypatch.chdir(cwd)
        assert audit_mod.audit(folder) == [], cwd
    assert cli.main(["audit", str(folder)]) == 0


def test_copy_audits_clean_from_anywhere(smoke, monkeypatch, capsys):
    """A copy elsewhere passes from ``/``, from the repository root and from inside it; logs, benchmarks and
    model weights (:data:`IGNORED_GLOBS`) may be added without a discrepancy."""
    for rel in ("logs/train/mlp-2x16-sigmoid/x.log", "models/mlp-2x16-sigmoid/crt-g0-r0.5-e1-n2000-s1/model.pt",
                "benchmarks/table/extra.tsv"):
        (smoke / rel).parent.mkdir(parents=True, exist_ok=True)
        (smoke / rel).write_text("machine-specific\n")
    for cwd in ("/", ROOT, smoke / "tables"):
        monkeypatch.chdir(cwd)
        assert audit_mod.audit(smoke) == [], cwd
    monkeypatch.chdir("/")
    assert cli.main(["audit", str(smoke)]) == 0
    capsys.readouterr()


def test_published_numbers_not_found_is_one_line_per_table(smoke, monkeypatch):
    """Without ``config/published.tsv`` above the folder, each table says so once (no skipped check, no cascade
    of column mismatches); ``--published`` supplies it, and a different file is refused by its hash."""
    (smoke.parents[1] / "config" / "published.tsv").unlink()
    monkeypatch.chdir("/")
    problems = audit_mod.audit(smoke)
    tables = sorted((smoke / "tables").glob("*.meta.json"))
    with_pub = [t for t in tables if json.loads(t.read_text())["published"]]
    assert with_pub and len(problems) == len(with_pub), problems
    assert all("input config/published.tsv missing" in p and "--published" in p for p in problems), problems
    assert audit_mod.audit(smoke, published=ROOT / "config" / "published.tsv") == []
    other = smoke.parent / "other.tsv"
    other.write_text((ROOT / "config" / "published.tsv").read_text().replace("\n", "\r\n", 1))
    problems = audit_mod.audit(smoke, published=other)
    assert problems and all("changed since the artifact was rendered" in p for p in problems), problems


# ----------------------------------------------------------------------------------------- fault injection


def _add(rel, text="x\n"):
    """A fault: write a file at ``rel``."""
    def fault(root):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return fault


def _edit(rel, fn, manifest=False):
    """A fault: edit the JSON file ``rel``; with ``manifest``, regenerate the manifest afterwards (a forger who
    covers the edit)."""
    def fault(root):
        _edit_json(root / rel, fn)
        if manifest:
            audit_mod.write_manifest(root)
    return fault


def _token(rel, key, token):
    """A fault: a non-finite number at ``key`` of the JSON file ``rel``, with the manifest regenerated."""
    def fault(root):
        _nonfinite(root / rel, key, token)
        audit_mod.write_manifest(root)
    return fault


def _files_entry(obj):
    """Change the sha256 data.json records for one MNIST file."""
    obj["files"]["t10k-labels-idx1-ubyte"] = "0" * 64


def _record_data(obj):
    """Say a record ran on other data."""
    obj["provenance"]["inputs"]["data"]["sha256"] = "1" * 64


FAULTS = [
    ("notes.txt", _add("notes.txt"), "notes.txt: stray file"),
    ("notes in logs", _add("logs/notes.txt"), "logs/notes.txt: stray file"),
    ("dotfile", _add(".notes"), ".notes: hidden file"),
    ("hidden artifact", _add(f"{CRC}.tsv".replace("crc-global", ".crc-global")),
     "/.crc-global-all-n20.tsv: hidden file"),
    ("stray partial", _add(f"{CRC}.tsv.partial"), f"{CRC}.tsv.partial: leftover of an interrupted run"),
    ("partial checkpoint", _add("models/mlp-2x16-sigmoid/crt-g0-r0.5-e1-n2000-s1/model.pt.partial"),
     "model.pt.partial: leftover of an interrupted run"),
    ("edited data.json", _edit("data.json", lambda o: o["sizes"].__setitem__("test", 9999)),
     "data.json: sha256"),
    ("data.json edited with its manifest", _edit("data.json", _files_entry, manifest=True),
     "data.json: its file hashes give the data hash"),
    ("record on other data", _edit(f"{CRC}.json", _record_data, manifest=True), f"{CRC}.json: ran on data 111111"),
    ("certify summary edited with its manifest", _edit(f"{CRC}.json", _set("certified_accuracy_at", {"0.5": 0.9}),
                                                                   manifest=True),
     f"{CRC}.json: certified_accuracy_at is {{'0.5': 0.9}}, its records {CRC}.tsv give"),
    ("crc exact_fraction edited with its manifest",
     _edit(f"{CRC}.json", _set("exact_fraction", 1.0), manifest=True), f"{CRC}.json: exact_fraction is 1.0"),
    ("attack summary edited with its manifest",
     _edit(f"{ATTACK}.json", _set("empirical_robust_accuracy", 1.0), manifest=True),
     f"{ATTACK}.json: empirical_robust_accuracy is 1.0"),
    ("curvature summary edited with its manifest", _edit(f"{CURVATURE}.json", _set("K_ub_mean", 0.1), manifest=True),
     f"{CURVATURE}.json: K_ub_mean is 0.1"),
    ("summary field removed with its manifest",
     _edit(f"{CRC}.json", lambda o: o.pop("mean_certificate_correct"), manifest=True),
     f"{CRC}.json: mean_certificate_correct is missing"),
    ("NaN in a provenance record", _token(f"{ATTACK}.json", "total_s", "NaN"),
     f"{ATTACK}.json: non-finite number NaN at provenance/timings/total_s"),
    ("NaN in a summary", _token(f"{CRC}.json", "accuracy", "NaN"), f"{CRC}.json: non-finite number NaN at accuracy"),
    ("Infinity in a sidecar", _token("tables/table1.meta.json", "wall_s", "Infinity"),
     "tables/table1.meta.json: non-finite number Infinity at provenance/timings/wall_s"),
    ("-Infinity in data.json", _token("data.json", "total_s", "-Infinity"),
     "data.json: non-finite number -Infinity at provenance/timings/total_s"),
]


@pytest.mark.parametrize("fault,expected", [f[1:] for f in FAULTS], ids=[f[0] for f in FAULTS])
def test_fault_is_a_discrepancy(smoke, monkeypatch, capsys, fault, expected):
    """Each injected fault makes ``sorobust audit`` (run from ``/``) exit 1 with a line naming it."""
    fault(smoke)
    monkeypatch.chdir("/")
    assert cli.main(["audit", str(smoke)]) == 1
    problems = capsys.readouterr().err.splitlines()
    assert any(expected in p for p in problems), problems


def test_manifest_never_lists_strays(smoke):
    """Regenerating the manifest does not bless a stray file: it lists artifacts only, so the stray stays
    reported; a stray the manifest names by hand is reported as not an artifact."""
    (smoke / "notes.txt").write_text("x\n")
    audit_mod.write_manifest(smoke)
    assert any(p.startswith("notes.txt: stray file") for p in audit_mod.audit(smoke))
    with open(smoke / audit_mod.MANIFEST, "a") as f:
        f.write("notes.txt\t" + "0" * 64 + "\t2\n")
    problems = audit_mod.audit(smoke)
    assert any(p.startswith("notes.txt: listed in MANIFEST.tsv but not an artifact") for p in problems), problems


# -------------------------------------------------------------------------------- summaries and strict JSON


def test_summaries_recompute_the_committed_ones():
    """:func:`summaries.of_records` gives exactly the numbers the CLI wrote for every committed summary."""
    n = 0
    for kind in audit_mod.SUMMARY_KINDS:
        for p in sorted((ROOT / "results" / "smoke" / kind).glob("**/*.json")):
            s = json.loads(p.read_text())
            cfg, prov = s["provenance"]["config"], s["provenance"]
            want = summaries.of_records(kind, read_tsv(p.with_suffix(".tsv")), rho=cfg.get("rho"),
                                        time_s=prov["timings"]["total_s"], method=cfg.get("method"))
            assert {k: s[k] for k in want} == want, p
            n += 1
    assert n > 30


def test_load_json_refuses_non_finite_numbers(tmp_path):
    """NaN and ±Infinity, which Python's json accepts, are refused with where they are; finite JSON reads."""
    p = tmp_path / "x.json"
    for token in ("NaN", "Infinity", "-Infinity"):
        p.write_text('{"a": [1, {"b": %s}]}' % token)
        with pytest.raises(ValueError, match=rf"non-finite number {token} at a/1/b"):
            audit_mod.load_json(p)
    p.write_text('{"a": [1, {"b": 2.5e-3}], "s": "NaN"}')
    assert audit_mod.load_json(p) == {"a": [1, {"b": 2.5e-3}], "s": "NaN"}


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf"), [1.0, float("nan")], "1"])
def test_provenance_schema_refuses_non_finite_timings(value):
    """The provenance schema (also inside the artifact schema) refuses a non-finite or non-numeric timing."""
    rec = json.loads((ROOT / "results" / "smoke" / f"{CRC}.json").read_text())["provenance"]
    assert not list(audit_mod.validator("provenance").iter_errors(rec))
    bad = copy.deepcopy(rec)
    bad["timings"]["total_s"] = value
    assert list(audit_mod.validator("provenance").iter_errors(bad))
    meta = json.loads((ROOT / "results" / "smoke" / "tables" / "table1.meta.json").read_text())
    assert not list(audit_mod.validator("artifact").iter_errors(meta))
    meta["provenance"]["timings"]["wall_s"] = value
    assert list(audit_mod.validator("artifact").iter_errors(meta))


def test_manifest_lists_data_json(smoke):
    """``data.json`` (the data's checksums every training job depends on) is an artifact the manifest hashes."""
    rows = read_tsv(audit_mod.write_manifest(smoke))
    assert "data.json" in {r["path"] for r in rows}
