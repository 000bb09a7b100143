"""The tables' content (issue 10): the headline table against an independent recomputation from hand-made records
with known counts, its soundness check, the published sound results it stands beside, the captions derived from the
plan, and the timing columns' layouts (no difference against the paper's GPU seconds, the machine named)."""

import copy
import json
import shutil
from pathlib import Path

import pytest
import yaml

from sorobust import audit as audit_mod
from sorobust import cli
from sorobust.artifacts import write_json, write_tsv
from sorobust.paper import tables as tabs
from sorobust.workflow import PUBLISHED_SOUND, build_plan, derive_config

ROOT = Path(__file__).resolve().parents[1]
RHO = 1.58


def _config(name="smoke"):
    return yaml.safe_load((ROOT / "config" / f"{name}.yaml").read_text())


# --------------------------------------------------------------------------------- hand-made per-point records


def _cert(n, correct, certified, hi, lo, shift=2):
    """Certify rows of n points: correct ones in ``correct``, certificate ``hi`` (> ρ, certified) on ``certified``,
    ``lo`` on the other correct points, 0 on the misclassified; target class label + ``shift``."""
    rows = []
    for i in range(n):
        ok, cert = i in correct, (hi if i in certified else lo) if i in correct else 0.0
        rows.append({"idx": i, "label": i % 10, "pred": i % 10 if ok else (i + 1) % 10, "correct": int(ok),
                     "target": (i + shift) % 10, "certificate": cert,
                     "exact": 0, "eta": 0.1, "residual": 0.0, "iterations": 3, "time_s": 0.01,
                     "certificate_reference": cert, "converged": 1, "f": 0.0, "m": -1.0, "M": 1.0})
    return rows


def _attack(n, correct, broken, distance, into=3):
    """AutoAttack rows of n points: ``broken`` correct points broken at ``distance`` into class label + ``into``;
    misclassified points count as successes at distance 0 (as pyautoattack returns them)."""
    rows = []
    for i in range(n):
        ok, hit = i in correct, i in broken
        adv = (i + into) % 10 if hit else i % 10 if ok else (i + 1) % 10
        rows.append({"idx": i, "label": i % 10, "pred": i % 10 if ok else (i + 1) % 10, "correct": int(ok),
                     "target": (i + 1) % 10, "pred_adv": adv, "distance": distance if hit else 0.0, "f": 0.0,
                     "success": int(hit or not ok), "robust": int(ok and not hit),
                     "robust_reference": int(ok and not hit), "dual_bound": None, "time_s": 0.02})
    return rows


N, N_ATTACK = 10, 8
#: per training label, the records of its row (the numbers the independent recomputation below expects)
RECORDS = {
    "CRT, 0.01": {"crc": _cert(N, range(8), {0, 1, 2}, 2.0, 1.0),
                  "crc_runner_up": _cert(N, range(8), {0, 1, 2, 3, 4, 5}, 2.0, 1.0),
                  # 5, 6, 7 broken at 1.5 into a class that is not the runner-up; 5 is runner-up certified
                  "autoattack": _attack(N_ATTACK, range(8), {5, 6, 7}, 1.5)},
    ("CROWN-IBP", "softplus"): {"ibp": _cert(N, range(7), {0, 1}, 1.7, 0.5),
                                "crown": _cert(N, range(7), {1, 2, 3}, 1.9, 0.5),
                                "autoattack": _attack(N_ATTACK, range(7), {4, 5}, 1.2)},
    "COAP": {"coap": _cert(N, range(9), {0, 1, 2, 3, 4}, 1.6, 0.2),
             "autoattack": _attack(N_ATTACK, range(9), set(), 0.0)},
    ("CROWN-IBP", "relu"): {"ibp": _cert(N, range(6), {0}, 1.8, 0.3),
                            "crown": _cert(N, range(6), set(), 1.8, 0.3),
                            "autoattack": _attack(N_ATTACK, range(6), {1, 2, 3}, 1.0)},
}


def _records_of(row):
    key = row["training"]
    return RECORDS[key] if key in RECORDS else RECORDS[(key, row["key"]["activation"])]


def _plan(**headline):
    cfg = _config()
    cfg["test"]["n_certified"] = N
    cfg["tables"] = {"table1": {"rho": RHO, "depths": [2], "crt_gamma": {"2": 0.01}},
                     "headline": {"depth": 2, "n_attack": N_ATTACK, "aa_version": "standard", **headline}}
    cfg["figures"] = {}
    return build_plan(cfg).to_json()


def _results(tmp_path, plan=None, edit=None):
    """A repository-like folder: config/{published,published_sound}.tsv beside results/smoke with the records of
    ``plan`` (``edit(records)`` may alter them first); returns (results folder, plan, sound path)."""
    plan = plan or _plan()
    root = tmp_path / "results" / "smoke"
    (tmp_path / "config").mkdir(parents=True)
    for f in ("published.tsv", "published_sound.tsv"):
        shutil.copy(ROOT / "config" / f, tmp_path / "config" / f)
    recs = {}
    for row in plan["tables"]["headline"]["rows"]:
        for k, rel in row["inputs"].items():
            recs[rel] = copy.deepcopy(_records_of(row)[k])
    if edit is not None:
        edit(plan, recs)
    for rel, rows in recs.items():
        write_tsv(root / rel, rows, cli.ATTACK_COLUMNS if rel.startswith("attack/") else cli.CERTIFY_COLUMNS)
    (root / "plan.json").write_text(json.dumps(plan))
    return root, plan, tmp_path / "config" / "published_sound.tsv"


def _certified_here(r, rho=RHO) -> bool:
    """Certified at ρ, written out here (not sorobust.summaries.certified_at): correct, certificate > ρ, converged."""
    return bool(r["correct"]) and r["certificate"] > rho and bool(r["converged"])


def _independent(rows_by_key, n_attack=N_ATTACK):
    """The headline's cells recomputed here, not with sorobust.paper.tables: percentages over each record's points,
    the bracket over the attack's points."""
    if "crc" in rows_by_key:
        sound, ref = rows_by_key["crc"], rows_by_key["crc_runner_up"]
        sound_cert = [_certified_here(r) for r in sound]
        ref_cert = [_certified_here(r) for r in ref]
    else:
        parts = [rows_by_key[k] for k in ("coap", "ibp", "crown") if k in rows_by_key]
        sound = parts[0]
        sound_cert = [any(_certified_here(p[i]) for p in parts) for i in range(len(sound))]
        ref_cert = None
    att = rows_by_key["autoattack"]
    broken = [bool(a["correct"] and a["success"]) for a in att]
    return {"std_acc": 100 * sum(r["correct"] for r in sound) / len(sound),
            "certified_sound": 100 * sum(sound_cert) / len(sound),
            "certified_reference": 100 * sum(ref_cert if ref_cert else sound_cert) / len(sound),
            "empirical_robust_acc": 100 * sum(a["robust"] for a in att) / len(att),
            "n_bracketed": n_attack,
            "broken_certified": sum(sound_cert[i] and broken[i] for i in range(n_attack)),
            "broken_reference": None if ref_cert is None else sum(ref_cert[i] and broken[i] for i in range(n_attack))}


# --------------------------------------------------------------------------------------------- headline


def test_headline_equals_an_independent_recomputation(tmp_path):
    root, plan, sound_path = _results(tmp_path)
    meta = audit_mod.render_table("headline", plan, root, tmp_path / "config" / "published.tsv", sound_path)
    cols, rows = tabs.read_csv((root / "tables" / "headline.csv").read_text())
    spec = plan["tables"]["headline"]
    assert len(spec["rows"]) == 4 and len(rows) == 4 + 5  # four Table 1 depth-2 models, five published rows
    for srow, row in zip(spec["rows"], rows):
        cell = dict(zip(cols, row))
        want = _independent(_records_of(srow))
        for col, v in want.items():
            if v is None:
                assert cell[col] == "", col
            else:
                assert float(cell[col]) == pytest.approx(v, abs=1e-9), (srow["training"], col)
        assert cell["source"] == "rerun here"
    # the known counts of the CRT row, by hand
    crt = dict(zip(cols, rows[0]))
    assert crt["training"] == "CRT, 0.01" and "runner-up" in crt["reference_protocol"]
    assert [float(crt[c]) for c in ("std_acc", "certified_reference", "certified_sound", "empirical_robust_acc")] == \
        [80.0, 60.0, 30.0, 62.5]
    assert (crt["n_bracketed"], crt["broken_certified"], crt["broken_reference"]) == ("8", "0", "1")
    # the paper's Table 1 cells beside them, from config/published.tsv (CRT 69.79 %, CROWN-IBP relu 44.96 %)
    assert float(crt["paper_certified_reference"]) == 69.79 and float(crt["paper_std_acc"]) == 98.68
    assert float(crt["diff_certified_reference"]) == pytest.approx(60.0 - 69.79)
    relu = dict(zip(cols, rows[3]))
    assert relu["training"] == "CROWN-IBP" and float(relu["paper_certified_reference"]) == 44.96
    assert float(relu["certified_reference"]) == float(relu["certified_sound"]) == 10.0  # own certificate, twice
    # the published sound results, labelled and cited
    pub = [dict(zip(cols, r)) for r in rows[4:]]
    assert {p["source"] for p in pub} == {"published, not rerun"}
    assert [(p["training"], float(p["certified_sound"])) for p in pub] == [
        ("GloRo", 62.8), ("BCOP", 57.05), ("BCOP", 54.26), ("BCP", 47.95), ("Wong et al. 2018", 44.53)]
    assert "Leino" in pub[0]["citation"] and "ICML 2021" in pub[0]["citation"] and "2102.08452" in pub[0]["citation"]
    assert all(p["std_acc"] == p["empirical_robust_acc"] == "" for p in pub)
    # Markdown, LaTeX and sidecar carry the caption; the published sound file is a hashed input
    md, tex = (root / "tables" / "headline.md").read_text(), (root / "tables" / "headline.tex").read_text()
    assert "published, not rerun" in md and "8 for AutoAttack-l2 (standard)" in md and "10 for CRC-global" in md
    assert "broken\\_certified" in tex and meta["caption"]["budget"]["test_points"]["AutoAttack-l2 (standard)"] == "8"
    assert meta["provenance"]["inputs"]["published_sound"]["path"] == str(sound_path)
    # the audit re-aggregates it, and notices an edited published sound file
    audit_mod.write_manifest(root)
    assert audit_mod.audit(root) == []
    sound_path.write_text(sound_path.read_text().replace("62.8", "72.8"))
    assert any("published_sound.tsv changed since" in p for p in audit_mod.audit(root))


def test_headline_refuses_a_soundness_violation(tmp_path):
    """A point that AutoAttack breaks below its sound certificate stops the table with the points named."""

    def certified_but_broken(plan, recs):
        crt = plan["tables"]["headline"]["rows"][0]["inputs"]["autoattack"]
        recs[crt][0].update(success=1, robust=0, robust_reference=0, distance=1.5, pred_adv=3)  # certified (2.0)
        recs[crt][3].update(success=1, robust=0, robust_reference=0, distance=0.9, pred_adv=6)  # certificate 1.0

    root, plan, sound = _results(tmp_path / "a", edit=certified_but_broken)
    with pytest.raises(tabs.SoundnessViolation, match=r"2 point\(s\).*idx 0 .*idx 3 ") as e:
        audit_mod.render_table("headline", plan, root, None, sound)
    assert "crt-g0.01" in str(e.value) and "\n" not in str(e.value)
    assert not (root / "tables" / "headline.csv").exists()
    # through the command line: one line, exit status 2
    assert cli.main(["table", "headline", "--plan", str(root / "plan.json"), "--results", str(root)]) == 2

    def into_runner_up(plan, recs):
        row = plan["tables"]["headline"]["rows"][0]["inputs"]
        t = recs[row["crc_runner_up"]][4]["target"]  # runner-up certified at 2.0 against class t
        recs[row["autoattack"]][4].update(success=1, robust=0, robust_reference=0, distance=1.5, pred_adv=t)

    root, plan, sound = _results(tmp_path / "b", edit=into_runner_up)
    with pytest.raises(tabs.SoundnessViolation, match=r"idx 4 \(runner-up certificate 2"):
        audit_mod.render_table("headline", plan, root, None, sound)
    # the same records of points broken into another class are no violation of the runner-up certificate
    assert tabs.bracket(_cert(3, range(3), {0, 1, 2}, 1.0, 1.0), _attack(3, range(3), {1}, 1.5), RHO)[
        "broken_certified"] == 0


def test_bracket_refuses_records_of_different_points():
    sound = _cert(4, range(4), {0}, 2.0, 1.0)
    att = _attack(4, range(4), set(), 0.0)
    att[2]["label"] = 7
    with pytest.raises(ValueError, match="point 2"):
        tabs.bracket(sound, att, RHO)
    with pytest.raises(ValueError, match="different points"):
        tabs.union_rows(sound, sound[:3])


def test_published_sound_results_are_parsed_and_cited(tmp_path):
    rows = tabs.load_published_sound(ROOT / PUBLISHED_SOUND)
    assert [(r["method"], r["certified_acc"]) for r in rows] == [
        ("GloRo", 62.8), ("BCOP", 57.05), ("BCOP", 54.26), ("BCP", 47.95), ("Wong et al. 2018", 44.53)]
    assert {(r["dataset"], r["rho"]) for r in rows} == {("mnist", 1.58)}
    by = {(r["method"], r["certified_acc"]): r for r in rows}
    assert by["GloRo", 62.8]["venue"].startswith("ICML 2021") and by["GloRo", 62.8]["arxiv"] == "arXiv:2102.08452"
    assert "Leino" in by["GloRo", 62.8]["authors"] and "Fredrikson" in by["GloRo", 62.8]["authors"]
    assert by["BCOP", 57.05]["year"] == 2019 and by["BCOP", 57.05]["arxiv"] == "arXiv:1911.00937"
    assert "large" in by["BCOP", 57.05]["model"] and "fully connected" in by["BCOP", 54.26]["model"]
    assert by["BCP", 47.95]["venue"] == "NeurIPS 2020" and "Lee" in by["BCP", 47.95]["authors"]
    w = by["Wong et al. 2018", 44.53]
    assert w["title"] == "Scaling provable adversarial defenses" and w["arxiv"] == "arXiv:1805.12514"
    assert all(r["citation"].startswith(r["authors"]) and str(r["venue"]) in r["citation"] for r in rows)
    # a malformed file is refused with its line
    bad = tmp_path / "bad.tsv"
    text = (ROOT / PUBLISHED_SOUND).read_text()
    bad.write_text(text.replace("\t62.8\t", "\t162.8\t"))
    with pytest.raises(ValueError, match=r"bad.tsv:\d+: certified_acc"):
        tabs.load_published_sound(bad)
    bad.write_text(text.replace("method\tmodel", "method\tnet"))
    with pytest.raises(ValueError, match="columns"):
        tabs.load_published_sound(bad)


# ------------------------------------------------------------------------------------------------- captions


def test_captions_state_the_budget_of_the_plan():
    """Every table's caption names, from the plan alone, each method's epochs, the training images, the test points
    of each kind of record and the protocol; a changed budget changes the caption."""
    from sorobust.workflow import parse_record

    for cfg in (_config("config"), _config("quick")):
        plan = build_plan(cfg).to_json()
        for name, spec in plan["tables"].items():
            counts = {rel: 10000 for row in spec["rows"] for rel in row["inputs"].values()}
            cap = tabs.caption(name, spec, plan, counts if cfg["name"] == "paper" else None)
            text = cap["text"]
            for mid in {row["model"] for row in spec["rows"]}:
                key = plan["models"][mid]
                label = tabs._METHOD_NAMES[key["method"]]
                epochs = cfg["training"][key["method"]]["epochs"]
                assert f"{label} {epochs} epoch" in text, (cfg["name"], name, label)
            for row in spec["rows"]:
                for rel in row["inputs"].values():
                    rec = parse_record(rel)
                    n = rec["n"] if rec["n"] != "all" else "all 10000" if cfg["name"] == "paper" else "all"
                    assert n in cap["budget"]["test_points"][tabs._record_label(rec, "standard")].split(" / ")
                    assert f"{n} for" in text
                    if rec["kind"] == "certify":
                        assert ("reference protocol" if rec["targets"] == "runner-up" else "sound, against every "
                                "wrong class") in text
    quick = build_plan(_config("quick")).to_json()
    t1 = tabs.caption("table1", quick["tables"]["table1"], quick)["text"]
    assert "CRT 1 epoch," in t1 and "COAP 3 epochs" in t1 and "COAP: the first 3000 MNIST training images" in t1
    assert "probabilistic bound (50 random projections)" in t1 and "100 for CRC-global (all classes)" in t1
    cfg = _config("quick")
    cfg["training"]["crt"]["epochs"], cfg["n_train"], cfg["test"]["n_certified"] = 7, 1234, 321
    plan = build_plan(cfg).to_json()
    t1 = tabs.caption("table1", plan["tables"]["table1"], plan)["text"]
    assert "CRT 7 epochs" in t1 and "321 for CRC-global" in t1 and "the first 1234 MNIST training images" in t1


def _timed_results(tmp_path, layout):
    cfg = _config()
    cfg["tables"] = {"table2": {"rho": 0.5, "depths": [2], "gammas": [], "crt_gamma": 0.01}}
    cfg["figures"] = {}
    plan = build_plan(cfg).to_json()
    spec = plan["tables"]["table2"]
    if layout is None:
        del spec["layout"]  # a plan written before layouts (results/smoke, results/quick)
    root = tmp_path / "r"
    for row in spec["rows"]:
        for rel in row["inputs"].values():
            write_tsv(root / rel, _cert(6, range(5), {0, 1}, 0.9, 0.3), cli.CERTIFY_COLUMNS)
            write_json((root / rel).with_suffix(".json"), {"provenance": {"environment": {
                "device": "cpu: Test CPU", "num_threads": 2}}})
    return tabs.compute("table2", spec, root, tabs.load_published(ROOT / "config" / "published.tsv"))


def test_timing_columns_show_the_machine_and_no_difference(tmp_path):
    cols, rows = _timed_results(tmp_path, layout=2)
    assert {"t_crc", "paper_t_crc", "t_crown", "paper_t_crown", "machine"} <= set(cols)
    assert not [c for c in cols if c.startswith("diff_t_")] and "diff_crc_mean" in cols
    assert {r["machine"] for r in rows} == {"cpu: Test CPU, 2 threads"}
    md = tabs.to_markdown("table2", cols, rows)
    assert "paper t_crc (s/image, paper's GPU)" in md and "Δ t_crc" not in md
    # a spec without a layout renders as before, so committed results still re-aggregate unchanged
    old_cols, _ = _timed_results(tmp_path / "old", layout=None)
    assert "diff_t_crc" in old_cols and "machine" not in old_cols


# ----------------------------------------------------------------------------------------------------- plan


@pytest.mark.parametrize("name", ["config", "paper_cpu"])
def test_plan_has_the_headline_with_autoattack_on_the_configured_points(name):
    from sorobust.workflow import attack_args

    raw = _config(name)
    cfg = derive_config(raw, ROOT) if "base" in raw else raw
    P = build_plan(cfg)
    head, t1 = P.tables["headline"], P.tables["table1"]
    t1_depth2 = [r for r in t1["rows"] if r["key"]["depth"] == 2]
    assert [r["model"] for r in head["rows"]] == [r["model"] for r in t1_depth2]
    assert [(r["training"], r["key"]["activation"]) for r in head["rows"]] == [
        ("CRT, 0.01", "softplus"), ("CROWN-IBP", "softplus"), ("COAP", "relu"), ("CROWN-IBP", "relu")]
    for h, r in zip(head["rows"], t1_depth2):
        aa = h["inputs"].pop("autoattack")
        n = raw.get("tables", {}).get("headline", {}).get("n_attack") or cfg["tables"]["headline"]["n_attack"]
        assert aa == f"attack/{h['model']}/autoattack-all-r1.58-n{n}.tsv" and aa in P.records
        assert h["inputs"] == r["inputs"]  # the certificates are Table 1's records: no new certify job
    assert head["rho"] == 1.58 and head["aa_version"] == "standard" and head["published_sound"] == PUBLISHED_SOUND
    assert attack_args("autoattack", cfg) == ["--method", "autoattack", "--aa-version", "standard"]
    assert sum(r.startswith("attack/") and "/autoattack-" in r for r in P.records) == 4


def test_headline_follows_table1_through_restrictions_and_the_schema():
    import jsonschema

    schema = yaml.safe_load((ROOT / "workflow" / "schemas" / "config.schema.yaml").read_text())
    for restrict in ({"depths": [3]}, {"tables": ["table2", "headline"]}):
        cfg = derive_config({"base": "config/config.yaml", "name": "x", "restrict": restrict}, ROOT)
        jsonschema.validate(cfg, schema)
        assert "headline" not in cfg["tables"] and "headline" not in build_plan(cfg).tables
    bad = _config()
    del bad["tables"]["table1"]
    with pytest.raises(jsonschema.ValidationError, match="table1"):
        jsonschema.validate(bad, schema)
    bad = _config()
    bad["tables"]["headline"]["aa_version"] = "plus"
    with pytest.raises(jsonschema.ValidationError, match="plus"):
        jsonschema.validate(bad, schema)
