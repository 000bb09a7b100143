"""The workflow layer: config schema, plan and path grammar, table aggregation, audit (and its failure on a
tampered artifact), and Snakemake itself (lint, dry runs, kill-and-resume on a tiny config)."""

import ast
import copy
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from sorobust import audit as audit_mod
from sorobust import cli
from sorobust.artifacts import read_tsv, write_tsv
from sorobust.paper import tables as tabs
from sorobust.workflow import build_plan, code_hash

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = shutil.which("snakemake") or str(Path(sys.executable).parent / "snakemake")
needs_snakemake = pytest.mark.skipif(not Path(SNAKEMAKE).exists(), reason="snakemake not installed")


def _config(name="smoke"):
    return yaml.safe_load((ROOT / "config" / f"{name}.yaml").read_text())


def _schema():
    return yaml.safe_load((ROOT / "workflow" / "schemas" / "config.schema.yaml").read_text())


# ------------------------------------------------------------------------------------------------ config


@pytest.mark.parametrize("name", ["config", "quick", "smoke"])
def test_profiles_validate(name):
    import jsonschema

    jsonschema.validate(_config(name), _schema())


def test_schema_rejects_unknown_keys_and_wrong_types():
    import jsonschema

    bad = _config()
    bad["tables"]["table1"]["rhoo"] = 1.0
    with pytest.raises(jsonschema.ValidationError, match="rhoo"):
        jsonschema.validate(bad, _schema())
    bad = _config()
    bad["training"]["crt"]["epochs"] = "three"
    with pytest.raises(jsonschema.ValidationError, match="three"):
        jsonschema.validate(bad, _schema())


@pytest.mark.parametrize("where", [("tables", "table1", "rho"), ("tables", "table2", "crt_gamma"),
                                   ("training", "crt", "lr"), ("training", "crown-ibp", "final_beta"),
                                   ("training", "trades", "trades_beta"), ("training", "coap", "starting_epsilon")])
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_schema_rejects_non_finite_numbers(where, value):
    """`.nan` satisfies every JSON-Schema bound (comparisons with NaN are false) and `.inf` every lower one: the
    schema's `finite` definition refuses both wherever the config has a number (issue 11)."""
    import jsonschema

    bad = _config()
    node = bad
    for k in where[:-1]:
        node = node[k]
    node[where[-1]] = value
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, _schema())
    bad = _config()
    bad["figures"]["certified_vs_radius"]["radii"].append(value)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, _schema())


# -------------------------------------------------------------------------------------------- plan, paths

GRAMMAR = {
    "model": r"(?P<arch>(mlp-\d+x\d+|cnn-\d+c\d+k\d+s)-(sigmoid|tanh|softplus|relu))/(?P<method>standard|gamma|crt|"
             r"pgd|trades|crown-ibp|coap)-g(?P<gamma>[0-9.e-]+)-r(?P<rho>[0-9.e-]+)-e(?P<epochs>\d+)-n(?P<ntrain>\d+|all)"
             r"-s(?P<seed>\d+)",
}


@pytest.mark.parametrize("name", ["config", "quick", "smoke"])
def test_plan_paths_follow_the_grammar_and_share_models(name):
    cfg = _config(name)
    P = build_plan(cfg)
    model_re = re.compile(GRAMMAR["model"] + r"\Z")
    rec_re = re.compile(r"(certify|attack|curvature)/(?P<model>[^/]+/[^/]+)/(?P<rest>[^/]+)\.tsv\Z")
    for mid, key in P.models.items():
        m = model_re.match(mid)
        assert m, mid
        # every parameter that changes the model is in its path
        assert m["arch"] == key.arch and m["method"] == key.method and float(m["gamma"]) == key.gamma
        assert float(m["rho"]) == key.rho and int(m["epochs"]) == cfg["training"][key.method]["epochs"]
        if key.method in ("standard", "gamma"):
            assert key.rho == 0  # no training radius: shared across the tables' ρ
    for rec in P.records:
        m = rec_re.match(rec)
        assert m and m["model"] in P.models, rec
    # standard nets are shared between tables (2, 3 and 4 all use the 2-layer sigmoid standard model)
    std = [k for k in P.models.values() if k.method == "standard" and k.arch.endswith("sigmoid")]
    assert len({k.arch for k in std}) == len(std)
    # every table row's inputs are records of the plan
    for t in P.tables.values():
        for row in t["rows"]:
            assert set(row["inputs"].values()) <= P.records


def test_code_hash_changes_only_for_affected_stages(tmp_path, monkeypatch):
    import sorobust.workflow as wf

    stages = list(wf.STAGE_MODULES) + list(wf.STAGE_VERSIONS)
    before = {s: code_hash(s) for s in stages}
    fake = tmp_path / "sorobust"
    shutil.copytree(ROOT / "sorobust", fake, ignore=shutil.ignore_patterns("__pycache__"))
    (fake / "paper" / "tables.py").write_text((fake / "paper" / "tables.py").read_text() + "\n# edit\n")
    # a refactor of the compute modules (here: a docstring and the CLI) reruns no compute stage
    for mod in ("train.py", "cli.py", "certify/crc.py"):
        (fake / mod).write_text((fake / mod).read_text() + "\n# refactor\n")
    monkeypatch.setattr(wf, "__file__", str(fake / "workflow.py"))
    after = {s: code_hash(s) for s in stages}
    assert after["render"] == before["render"]  # a comment is not code
    (fake / "paper" / "tables.py").write_text((fake / "paper" / "tables.py").read_text() + "\nEDIT = 1\n")
    after = {s: code_hash(s) for s in stages}
    assert after["render"] != before["render"]
    assert all(after[s] == before[s] for s in wf.STAGE_VERSIONS)


def test_a_docstring_or_comment_edit_reruns_nothing(tmp_path, monkeypatch):
    """Issue 12: editing a docstring (module, class or function) or a comment of any module leaves every stage's
    trigger as it was; an edit of the code of a rendering module changes the render trigger."""
    import sorobust.workflow as wf

    stages = list(wf.STAGE_MODULES) + list(wf.STAGE_VERSIONS)
    before = {s: code_hash(s) for s in stages}
    fake = tmp_path / "sorobust"
    shutil.copytree(ROOT / "sorobust", fake, ignore=shutil.ignore_patterns("__pycache__"))
    for py in fake.rglob("*.py"):
        src = py.read_text()
        tree = ast.parse(src)
        doc = ast.get_docstring(tree, clean=False)
        if doc:  # the module docstring, edited in place
            src = src.replace(doc, doc + " (edited)", 1)
        for node in ast.walk(ast.parse(src)):  # the first function's docstring
            if isinstance(node, ast.FunctionDef) and ast.get_docstring(node, clean=False):
                d = ast.get_docstring(node, clean=False)
                src = src.replace(d, d.rstrip() + " Edited.", 1)
                break
        py.write_text(src + "\n# a comment\n")
    monkeypatch.setattr(wf, "__file__", str(fake / "workflow.py"))
    assert {s: code_hash(s) for s in stages} == before
    tables = fake / "paper" / "tables.py"
    tables.write_text(tables.read_text().replace("def fmt(", "def fmt_(", 1))
    assert code_hash("render") != before["render"]


def test_code_hash_refuses_a_missing_module(monkeypatch):
    import sorobust.workflow as wf

    monkeypatch.setitem(wf.STAGE_MODULES, "render", ("paper/tables", "no_such_module"))
    with pytest.raises(FileNotFoundError, match="no_such_module"):
        code_hash("render")


# ------------------------------------------------------------------------------------------ derived profiles


def test_derived_profile_takes_every_budget_from_its_base():
    from sorobust.workflow import derive_config

    derived = yaml.safe_load((ROOT / "config" / "paper_cpu.yaml").read_text())
    cfg = derive_config(derived, ROOT)
    base = _config("config")
    import jsonschema

    jsonschema.validate(cfg, _schema())
    # budgets and hyper-parameters are the base's, byte for byte
    for k in ("training", "test", "n_train", "width", "conv", "seed", "dataset"):
        assert cfg[k] == base[k], k
    assert cfg["name"] == derived["name"] and cfg["derived"]["base"] == "config/config.yaml"
    # depth 2 and the conv net only; every model is one of the base plan's (same path, same train options)
    P, B = build_plan(cfg), build_plan(base)
    assert set(P.models) < set(B.models)
    assert {P.train_args(m) == B.train_args(m) for m in P.models} == {True}
    assert {k.arch for k in P.models.values()} == {"mlp-2x1024-softplus", "mlp-2x1024-relu", "mlp-2x1024-sigmoid",
                                                    "cnn-5c3k1s-tanh"}
    assert P.records < B.records
    assert set(P.tables) == {"table1", "table2", "table3", "table4", "table5", "iclr_table3", "protocol",
                             "headline"}
    assert "curvature" not in P.figures and "certified_vs_radius" in P.figures
    for t in ("table1", "table2", "table3", "iclr_table3"):
        assert cfg["tables"][t]["depths"] == [2]


def test_derived_profile_schema_refuses_budgets():
    import jsonschema

    schema = yaml.safe_load((ROOT / "workflow" / "schemas" / "derived.schema.yaml").read_text())
    ok = {"base": "config/config.yaml", "name": "x", "restrict": {"depths": [2]}}
    jsonschema.validate(ok, schema)
    for bad in ({**ok, "training": {"crt": {"epochs": 1}}}, {**ok, "test": {"n_certified": 10}},
                {**ok, "restrict": {"depths": [2], "epochs": 3}}, {**ok, "restrict": {"tables": ["table9"]}}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, schema)


def test_yaml_loader_refuses_duplicate_keys():
    from sorobust.workflow import load_yaml

    with pytest.raises(ValueError, match="duplicate key 'rho'"):
        load_yaml("tables:\n  table1: {rho: 1.58, rho: 2.0}\n")
    assert load_yaml("a: 1\nb: {c: 2}\n") == {"a": 1, "b": {"c": 2}}


# --------------------------------------------------------------------------------- tables and the audit


def _fake_results(tmp_path, n=10, seed=0):
    """A results folder with hand-made CRC/CROWN records for table 4 and table 2 rows of a small plan."""
    import random

    rnd = random.Random(seed)
    cfg = _config()
    cfg["tables"] = {"table2": {"rho": 0.5, "depths": [2], "gammas": [], "crt_gamma": 0.01},
                     "table4": {"rho": 0.5, "depth": 2, "crt_gammas": [0.01]}, "protocol": {}}
    cfg["figures"] = {}
    P = build_plan(cfg)
    root = tmp_path / "results" / "smoke"
    for rec in sorted(P.records):
        rows = []
        for i in range(n):
            correct = rnd.random() < 0.8
            cert = rnd.uniform(0, 1.2)
            rows.append({"idx": i, "label": i % 10, "pred": i % 10 if correct else (i + 1) % 10,
                         "correct": correct, "target": 0, "certificate": cert,
                         "exact": rnd.random() < 0.5, "eta": 0.1,
                         "residual": 0.0, "iterations": 3, "time_s": rnd.uniform(0.01, 0.02),
                         "certificate_reference": cert, "converged": True, "f": 0.0, "m": 0.0, "M": 1.0})
        write_tsv(root / rec, rows, cli.CERTIFY_COLUMNS)
    plan = P.to_json()
    (root / "plan.json").write_text(json.dumps(plan))
    for t in plan["tables"]:
        audit_mod.render_table(t, plan, root, ROOT / "config" / "published.tsv")
    audit_mod.write_manifest(root)
    return root, plan


def test_table_cells_equal_a_direct_computation(tmp_path):
    root, plan = _fake_results(tmp_path)
    cols, rows = tabs.read_csv((root / "tables" / "table4.csv").read_text())
    for spec_row, row in zip(plan["tables"]["table4"]["rows"], rows):
        g = read_tsv(root / spec_row["inputs"]["crc"])
        loc = read_tsv(root / spec_row["inputs"]["crc_local"])
        want_g = sum(r["certificate"] for r in g if r["correct"]) / sum(r["correct"] for r in g)
        want_l = sum(r["certificate"] for r in loc if r["correct"]) / sum(r["correct"] for r in loc)
        assert float(row[cols.index("crc_global")]) == pytest.approx(want_g, rel=1e-6)
        assert float(row[cols.index("crc_local")]) == pytest.approx(want_l, rel=1e-6)
        # the published cell and the difference stand beside the measured one
        if row[cols.index("training")] == "standard":
            assert float(row[cols.index("paper_crc_global")]) == 0.5013
            assert float(row[cols.index("diff_crc_global")]) == pytest.approx(want_g - 0.5013, abs=1e-6)
    cols2, rows2 = tabs.read_csv((root / "tables" / "table2.csv").read_text())
    r0 = plan["tables"]["table2"]["rows"][0]
    crc = read_tsv(root / r0["inputs"]["crc"])
    assert float(rows2[0][cols2.index("std_acc")]) == pytest.approx(100 * sum(r["correct"] for r in crc) / len(crc))
    assert float(rows2[0][cols2.index("certified_acc")]) == pytest.approx(
        100 * sum(r["correct"] and r["certificate"] > 0.5 and r["converged"] for r in crc) / len(crc))
    md = (root / "tables" / "table2.md").read_text()
    tex = (root / "tables" / "table2.tex").read_text()
    assert "paper std_acc" in md and "\\begin{tabular}" in tex


def test_audit_passes_on_a_clean_folder_and_fails_on_tampering(tmp_path):
    root, plan = _fake_results(tmp_path)
    assert audit_mod.audit(root) == []
    assert cli.main(["audit", str(root)]) == 0

    # 1. an edited table cell: hash mismatch with the manifest and with the sidecar, and the cell itself
    csv = root / "tables" / "table4.csv"
    original = csv.read_text()
    lines = original.splitlines()
    cells = lines[1].split(",")
    cells[2] = "9.99"
    csv.write_text("\n".join([lines[0], ",".join(cells)] + lines[2:]) + "\n")
    problems = audit_mod.audit(root)
    assert any("table4.csv" in p and "manifest" in p for p in problems), problems
    assert any("table4.csv" in p and "records give" in p for p in problems), problems
    assert cli.main(["audit", str(root)]) == 1
    # even a forger who also rewrites the manifest is caught by re-aggregation from the records
    audit_mod.write_manifest(root)
    problems = audit_mod.audit(root)
    assert any("records give" in p for p in problems) and not any("manifest" in p for p in problems), problems
    csv.write_text(original)
    audit_mod.write_manifest(root)
    assert audit_mod.audit(root) == []

    # 2. a per-point record changed after the table was rendered
    rec = root / plan["tables"]["table4"]["rows"][0]["inputs"]["crc"]
    rows = read_tsv(rec)
    rows[0]["certificate"] = rows[0]["certificate"] + 1.0
    rows[0]["correct"] = 1
    write_tsv(rec, rows, list(rows[0]))
    problems = audit_mod.audit(root)
    assert any("changed since the artifact was rendered" in p for p in problems), problems

    # 3. an invalid provenance record and an unlisted artifact
    meta = root / "tables" / "table2.meta.json"
    m = json.loads(meta.read_text())
    m["provenance"]["sorobust"]["code_hash"] = "not-a-hash"
    meta.write_text(json.dumps(m))
    (root / "tables" / "extra.csv").write_text("a\n1\n")
    problems = audit_mod.audit(root)
    assert any("table2.meta.json" in p and "code_hash" in p for p in problems), problems
    assert any("extra.csv" in p and "not listed" in p for p in problems), problems


def test_compare_tables_tolerance(tmp_path):
    a, _ = _fake_results(tmp_path / "a", seed=0)
    b, _ = _fake_results(tmp_path / "b", seed=0)
    assert audit_mod.compare_tables(a, b) == []
    c, _ = _fake_results(tmp_path / "c", seed=1)
    assert audit_mod.compare_tables(a, c)  # different records: cells differ beyond tolerance


# ------------------------------------------------------------------------------------------- snakemake


def _sm(args, cwd, timeout=600, **kw):
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}")
    return subprocess.run([SNAKEMAKE, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
                          **kw)


@needs_snakemake
def test_snakemake_lint_is_clean():
    r = _sm(["--lint"], ROOT)
    assert r.returncode == 0 and "Congratulations" in r.stdout + r.stderr, r.stdout + r.stderr


@needs_snakemake
@pytest.mark.parametrize("name", ["config", "quick", "smoke", "paper_cpu"])
def test_dry_run_plans_the_whole_dag(name, tmp_path):
    """Every model, table and figure of the plan, and the headline's AutoAttack jobs (its own rule), in the DAG of
    each profile (the derived paper_cpu resolved from its base)."""
    from sorobust.workflow import derive_config

    r = _sm(["-n", "--configfile", f"config/{name}.yaml", "--config", f"name=dry_{name}"], ROOT)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    cfg = _config(name)
    P = build_plan(derive_config(cfg, ROOT) if "base" in cfg else cfg)
    autoattacks = [p for p in P.records if p.startswith("attack/") and "/autoattack-" in p]
    assert len(autoattacks) == 4 and "headline" in P.tables
    for rule, n in [("train", len(P.models)), ("table", len(P.tables)), ("figure", len(P.figures)),
                    ("autoattack", len(autoattacks)), ("attack", sum(p.startswith("attack/") for p in P.records)
                                                       - len(autoattacks)), ("manifest", 1)]:
        assert re.search(rf"^{rule}\s+{n}\s*$", out, re.M), (rule, n, out[-3000:])


@needs_snakemake
@pytest.mark.parametrize("change,message", [
    ({"tables": {"table1": {"rhoo": 1.0}}}, "rhoo"),
    ({"training": {"crt": {"epochs": "three"}}}, "three"),
    ({"tables": {"table1": {"rho": float("nan")}}}, "nan should not be valid"),
    ({"tables": {"table1": {"rho": float("inf")}}}, "inf is greater than the maximum"),
])
def test_bad_config_stops_before_any_job(tmp_path, change, message):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(change))
    r = _sm(["-n", "--configfile", "config/smoke.yaml", str(bad)], ROOT)
    out = r.stdout + r.stderr
    assert r.returncode != 0 and message in out and "ValidationError" in out, out[-2000:]
    assert "Job stats" not in out


@needs_snakemake
def test_duplicate_config_key_stops_with_one_line(tmp_path):
    """A config file with a duplicate key (Snakemake's YAML loader keeps the last silently) stops the workflow
    before any job with one line naming the file, the key and the line (common.smk re-reads it with load_yaml)."""
    bad = tmp_path / "dup.yaml"
    bad.write_text("tables:\n  table1: {rho: 1.58, rho: 2.0}\n")
    r = _sm(["-n", "--configfile", "config/smoke.yaml", str(bad)], ROOT)
    out = r.stdout + r.stderr
    assert r.returncode != 0, out[-2000:]
    assert [ln for ln in out.splitlines() if "error" in ln.lower()] == [
        f"error: {bad}: duplicate key 'rho' (line 2); keep one"], out[-2000:]
    assert "Traceback" not in out and "Job stats" not in out


def _tiny_workdir(tmp_path):
    wd = tmp_path / "wd"
    wd.mkdir()
    for item in ("Snakefile", "workflow", "config"):
        src = ROOT / item
        (shutil.copytree if src.is_dir() else shutil.copy)(src, wd / item)
    shutil.copytree(ROOT / "sorobust", wd / "sorobust", ignore=shutil.ignore_patterns("__pycache__"))
    cfg = copy.deepcopy(_config())
    cfg["name"] = "tiny"
    cfg["tables"] = {"table4": {"rho": 0.5, "depth": 2, "crt_gammas": [0.01]}}
    cfg["figures"] = {}
    cfg["n_train"] = 1000
    cfg["training"]["crt"]["epochs"] = 30  # long enough (seconds) to be interrupted between checkpoints
    cfg["test"] = {"n_certified": 10, "n_certificate": 10, "batch_size": 5}
    (wd / "config" / "tiny.yaml").write_text(yaml.safe_dump(cfg))
    return wd


@needs_snakemake
def test_killed_workflow_resumes_without_half_written_artifacts(tmp_path):
    wd = _tiny_workdir(tmp_path)
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}")
    args = [SNAKEMAKE, "--configfile", "config/tiny.yaml", "--cores", "1", "--config", "name=tiny"]
    proc = subprocess.Popen(args, cwd=wd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    partial = wd / "results/tiny/models/mlp-2x16-sigmoid"
    deadline = time.time() + 300
    # interrupt while the CRT model trains (its checkpoint of epoch 1 exists, the model does not yet)
    while time.time() < deadline and not list(partial.glob("crt-*/model.pt.partial")):
        time.sleep(0.02)
    assert list(partial.glob("crt-*/model.pt.partial")), "training never started"
    os.killpg(proc.pid, signal.SIGINT)
    proc.wait(timeout=120)
    assert not list(partial.glob("crt-*/model.pt"))  # nothing half-written at an output path
    r = subprocess.run(args + ["--rerun-incomplete"], cwd=wd, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    res = wd / "results" / "tiny"
    assert audit_mod.audit(res) == []
    assert not list(res.glob("**/*.partial")) and not list(res.glob("**/.*.tmp"))


def test_figures_from_records_equal_direct_computation(tmp_path):
    from sorobust.paper import figures as figs

    root = tmp_path / "r"
    rows_a = [{"idx": i, "correct": i % 4 != 0, "certificate": 0.3 * i, "converged": 1} for i in range(8)]
    rows_b = [{"idx": i, "correct": i % 4 != 0, "certificate": 0.1 * (8 - i), "converged": 1} for i in range(8)]
    write_tsv(root / "a.tsv", rows_a, ["idx", "correct", "certificate", "converged"])
    write_tsv(root / "b.tsv", rows_b, ["idx", "correct", "certificate", "converged"])
    spec = {"series": [{"label": "x", "depth": 2, "records": ["a.tsv", "b.tsv"]}], "radii": [0, 0.5, 1.0, 2.0]}
    got = figs.certified_curves(spec, root)[0]["certified_acc"]
    best = [max(a["certificate"], b["certificate"]) for a, b in zip(rows_a, rows_b)]
    want = [100 * sum(r["correct"] and c > rad for r, c in zip(rows_a, best)) / 8 for rad in spec["radii"]]
    assert got == want
    curv = [{"idx": i, "label": 1, "target": t, "K_ub": 10.0 + t, "hessian_norm": 0.5 * i + t}
            for i in range(3) for t in (0, 2)]
    write_tsv(root / "k.tsv", curv, ["idx", "label", "target", "K_ub", "hessian_norm"])
    pts = figs.curvature_points({"points": [{"method": "CRT", "gamma": 0.0, "curvature": "k.tsv"}]}, root)[0]
    assert pts["K_ub"] == pytest.approx((10 + 12) / 2) and pts["K_lb"] == pytest.approx((1.0 + 3.0) / 2)
    paths = figs.draw("certified_vs_radius", figs.certified_curves(spec, root), root / "fig")
    assert all(p.stat().st_size > 0 for p in paths)
