"""Artifact rendering, the MANIFEST, and ``sorobust audit``: is a results folder what its records say it is?

``render_table`` / ``render_figure`` write a table (CSV, Markdown, LaTeX) or a figure (PNG, PDF) from per-point
records, with a sidecar ``X.meta.json``: the plan spec it was computed from, the sha256 of every output, a
provenance record (code version and dirty flag, resolved config, inputs' hashes, seeds, torch/Python/CUDA
versions, device, wall time), and an **artifact version**: the first 16 hex digits of the sha256 of (code hash,
spec, config, inputs' hashes), so two artifacts with the same version were computed by the same code from the same
data in the same way.

``write_manifest`` lists every artifact of a results folder (path relative to it, sha256, bytes) in
``MANIFEST.tsv``. :func:`audit` then checks, and reports one precise line per discrepancy:

1. every file of the manifest exists with its sha256, and no artifact exists that the manifest omits;
2. every provenance record (``*.json`` beside records and checkpoints, ``*.meta.json`` of tables and figures)
   validates against ``sorobust/schemas/*.schema.json``;
3. every sidecar's output hashes match the files, and its recorded inputs match the records' current hashes;
4. every table re-aggregated from its per-point records equals its CSV cell by cell.

:func:`compare_tables` compares two results folders' tables under a documented tolerance (used by CI to check
the regenerated smoke tables against the committed ones).
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from pathlib import Path

from .artifacts import atomic_write, provenance, read_tsv, sha256_file, write_json, write_tsv
from .errors import SorobustError
from .paper import figures as figs
from .paper import tables as tabs

SCHEMA_DIR = Path(__file__).parent / "schemas"
MANIFEST = "MANIFEST.tsv"
# what a results folder's manifest covers (logs and benchmarks are machine-specific and left out)
ARTIFACT_GLOBS = ("plan.json", "models/**/model.json", "certify/**/*.tsv", "certify/**/*.json", "attack/**/*.tsv",
                  "attack/**/*.json", "curvature/**/*.tsv", "curvature/**/*.json", "tables/*", "figures/*")


def _schema(name: str) -> dict:
    s = json.loads((SCHEMA_DIR / f"{name}.schema.json").read_text())
    if name == "artifact":
        s["properties"]["provenance"] = _schema("provenance")
    return s


def _artifact_version(spec, config, inputs: dict) -> str:
    from .artifacts import code_version

    blob = json.dumps({"code": code_version()["code_hash"], "spec": spec, "config": config,
                       "inputs": {k: v["sha256"] for k, v in sorted(inputs.items())}}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def records_of(spec: dict) -> list[str]:
    """Every per-point record (``*.tsv``, relative to the results folder) a table or figure spec names."""
    out = []

    def walk(o):
        if isinstance(o, dict):
            for v in o.values():
                walk(v)
        elif isinstance(o, list):
            for v in o:
                walk(v)
        elif isinstance(o, str) and o.endswith(".tsv"):
            out.append(o)

    walk(spec)
    return sorted(set(out))


def load_plan(path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise SorobustError(f"plan file '{path}' not found; run the workflow's plan rule first") from None


def _sidecar(kind, name, spec, plan, root: Path, outputs: list[Path], t0: float, published=None) -> dict:
    ins = {rel: root / rel for rel in records_of(spec)}
    if published is not None:
        ins["published"] = Path(published)
    prov = provenance(command=f"sorobust {kind} {name}", config=plan["config"], inputs=ins,
                      seeds={"seed": plan["config"].get("seed")}, timings={"wall_s": time.perf_counter() - t0})
    # record inputs relative to the results folder, so a moved or cloned folder still audits
    for rel, rec in prov["inputs"].items():
        rec["path"] = rel if rel != "published" else str(published)
    return {"artifact": name, "kind": kind, "artifact_version": _artifact_version(spec, plan["config"],
                                                                                    prov["inputs"]),
            "outputs": {p.name: sha256_file(p) for p in outputs}, "spec": spec,
            "published": str(published) if published is not None else None, "provenance": prov}


def render_table(name: str, plan: dict, root, published=None) -> dict:
    """Compute table ``name`` of ``plan`` from the records under ``root``; write tables/NAME.{csv,md,tex,meta.json}."""
    if name not in plan["tables"]:
        raise SorobustError(f"table '{name}' is not in this plan; its tables are {', '.join(plan['tables'])}")
    t0 = time.perf_counter()
    root = Path(root)
    spec = plan["tables"][name]
    pub = tabs.load_published(published) if published else None
    columns, rows = tabs.compute(name, spec, root, pub)
    out = root / "tables"
    paths = [out / f"{name}.csv", out / f"{name}.md", out / f"{name}.tex"]
    note = (f"Profile `{plan['profile']}`: {plan['config']['test']['n_certified']} / "
            f"{plan['config']['test']['n_certificate']} test points (accuracy / certificate tables); "
            f"Δ = measured − paper.")
    for p, text in zip(paths, [tabs.to_csv(columns, rows), tabs.to_markdown(name, columns, rows, note),
                               tabs.to_latex(name, columns, rows)]):
        with atomic_write(p) as f:
            f.write(text)
    meta = _sidecar("table", name, spec, plan, root, paths, t0, published)
    write_json(out / f"{name}.meta.json", meta)
    return meta


def render_figure(name: str, plan: dict, root) -> dict:
    if name not in plan["figures"]:
        raise SorobustError(f"figure '{name}' is not in this plan; its figures are {', '.join(plan['figures'])}")
    t0 = time.perf_counter()
    root = Path(root)
    spec = plan["figures"][name]
    data = figs.compute(name, spec, root)
    paths = figs.draw(name, data, root / "figures" / name, title=spec.get("network", f"profile {plan['profile']}"))
    meta = _sidecar("figure", name, spec, plan, root, paths, t0)
    meta["data"] = data
    write_json(root / "figures" / f"{name}.meta.json", meta)
    return meta


# ---------------------------------------------------------------------------------------------- manifest


def _artifacts(root: Path) -> list[Path]:
    found = set()
    for g in ARTIFACT_GLOBS:
        found.update(p for p in root.glob(g) if p.is_file() and not p.name.startswith(".")
                     and ".partial" not in p.name)
    return sorted(found)


def write_manifest(root) -> Path:
    """``MANIFEST.tsv``: path (relative to ``root``), sha256 and size of every artifact."""
    root = Path(root)
    rows = [{"path": p.relative_to(root).as_posix(), "sha256": sha256_file(p), "bytes": p.stat().st_size}
            for p in _artifacts(root)]
    write_tsv(root / MANIFEST, rows, ["path", "sha256", "bytes"])
    return root / MANIFEST


# ------------------------------------------------------------------------------------------------- audit


def _close(a: str, b: str, rel: float = 1e-6) -> bool:
    if a == b:
        return True
    try:
        x, y = float(a), float(b)
    except ValueError:
        return False
    if math.isnan(x) and math.isnan(y):
        return True
    return abs(x - y) <= rel * max(1.0, abs(x), abs(y))


def audit(root, published=None) -> list[str]:
    """All discrepancies of the results folder ``root`` (empty when it audits clean)."""
    import jsonschema

    root = Path(root)
    problems: list[str] = []
    man = root / MANIFEST
    if not man.is_file():
        return [f"{man}: no manifest; run `sorobust manifest {root}` (the workflow's manifest rule)"]
    listed = {}
    for r in read_tsv(man):
        listed[r["path"]] = r["sha256"]
        p = root / r["path"]
        if not p.is_file():
            problems.append(f"{r['path']}: listed in {MANIFEST} but missing")
        elif sha256_file(p) != r["sha256"]:
            problems.append(f"{r['path']}: sha256 {sha256_file(p)[:12]}… differs from the manifest's "
                            f"{r['sha256'][:12]}… (modified after the run)")
    for p in _artifacts(root):
        rel = p.relative_to(root).as_posix()
        if rel not in listed:
            problems.append(f"{rel}: artifact not listed in {MANIFEST}")

    prov_schema, art_schema = _schema("provenance"), _schema("artifact")
    for p in sorted(root.glob("**/*.json")):
        rel = p.relative_to(root).as_posix()
        if rel == "plan.json" or ".partial" in p.name or rel.startswith(("logs/", "benchmarks/")):
            continue
        try:
            obj = json.loads(p.read_text())
        except json.JSONDecodeError as e:
            problems.append(f"{rel}: not valid JSON ({e.msg} at line {e.lineno})")
            continue
        try:
            if p.name.endswith(".meta.json"):
                jsonschema.validate(obj, art_schema)
            else:
                jsonschema.validate(obj.get("provenance"), prov_schema)
        except jsonschema.ValidationError as e:
            where = "/".join(str(x) for x in e.absolute_path) or "(root)"
            problems.append(f"{rel}: provenance record invalid at {where}: {e.message}")
            continue
        if p.name.endswith(".meta.json"):
            base = p.parent
            for fname, digest in obj["outputs"].items():
                f = base / fname
                if not f.is_file():
                    problems.append(f"{rel}: output {fname} missing")
                elif sha256_file(f) != digest:
                    problems.append(f"{(base / fname).relative_to(root).as_posix()}: sha256 differs from "
                                    f"{rel} (edited after rendering)")
            for name, rec in obj["provenance"]["inputs"].items():
                f = root / rec["path"] if name != "published" else Path(rec["path"])
                if name == "published" and not f.is_file():
                    continue  # the published numbers live in the repository, not in the results folder
                if not f.is_file():
                    problems.append(f"{rel}: input {rec['path']} missing")
                elif sha256_file(f) != rec["sha256"]:
                    problems.append(f"{rel}: input {rec['path']} changed since the artifact was rendered")
            if obj["kind"] == "table":
                problems += _reaggregate(root, obj, published)
    return problems


def _reaggregate(root: Path, meta: dict, published=None) -> list[str]:
    name = meta["artifact"]
    csv_path = root / "tables" / f"{name}.csv"
    if not csv_path.is_file():
        return [f"tables/{name}.csv: missing"]
    pub_path = published or meta.get("published")
    pub = tabs.load_published(pub_path) if pub_path and Path(pub_path).is_file() else None
    try:
        columns, rows = tabs.compute(name, meta["spec"], root, pub)
    except (OSError, KeyError, ValueError) as e:
        return [f"tables/{name}.csv: cannot re-aggregate from its records ({e})"]
    want_cols, want_rows = tabs.read_csv(tabs.to_csv(columns, rows))
    have_cols, have_rows = tabs.read_csv(csv_path.read_text())
    out = []
    if have_cols != want_cols:
        return [f"tables/{name}.csv: columns {have_cols} differ from the re-aggregated {want_cols}"]
    if len(have_rows) != len(want_rows):
        return [f"tables/{name}.csv: {len(have_rows)} rows, re-aggregation gives {len(want_rows)}"]
    for i, (h, w) in enumerate(zip(have_rows, want_rows)):
        for c, a, b in zip(have_cols, h, w):
            if not _close(a, b):
                out.append(f"tables/{name}.csv: row {i + 1} ({h[0]}, {h[1]}) column {c}: table says {a}, "
                           f"records give {b}")
    return out


def compare_tables(a, b, pct_points: float | None = None, rel: float = 0.10) -> list[str]:
    """Differences between the tables of two results folders beyond the tolerance.

    Tolerance (documented in README "CI"): percentage columns may differ by ``pct_points`` (default: two test
    points, 200/n %), other numeric columns by ``rel`` relative (10%); timing columns (``t_*``) and their
    differences are machine-dependent and not compared; labels must be equal.
    """
    a, b = Path(a), Path(b)
    out = []
    for pa in sorted((a / "tables").glob("*.csv")):
        pb = b / "tables" / pa.name
        if not pb.is_file():
            out.append(f"tables/{pa.name}: missing in {b}")
            continue
        meta = json.loads((a / "tables" / (pa.stem + ".meta.json")).read_text()) \
            if (a / "tables" / (pa.stem + ".meta.json")).is_file() else {}
        n = meta.get("provenance", {}).get("config", {}).get("test", {}).get("n_certificate", 100)
        tol_pct = pct_points if pct_points is not None else 200.0 / max(int(n), 1)
        ca, ra = tabs.read_csv(pa.read_text())
        cb, rb = tabs.read_csv(pb.read_text())
        if ca != cb or len(ra) != len(rb):
            out.append(f"tables/{pa.name}: shape or columns differ")
            continue
        for i, (x, y) in enumerate(zip(ra, rb)):
            for c, u, v in zip(ca, x, y):
                base = c.removeprefix("paper_").removeprefix("diff_")
                if base.startswith("t_") or c.startswith(("paper_", "diff_")):
                    continue
                try:
                    fu, fv = float(u), float(v)
                except ValueError:
                    if u != v:
                        out.append(f"tables/{pa.name}: row {i + 1} column {c}: '{u}' vs '{v}'")
                    continue
                if math.isnan(fu) and math.isnan(fv):
                    continue
                tol = tol_pct if base in tabs.PCT else rel * max(abs(fu), abs(fv), 1e-12)
                if not abs(fu - fv) <= tol:
                    out.append(f"tables/{pa.name}: row {i + 1} ({x[0]}, {x[1]}) column {c}: {u} vs {v} "
                               f"(tolerance {tol:.3g})")
    return out
