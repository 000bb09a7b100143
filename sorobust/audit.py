"""Artifact rendering, the MANIFEST, and ``sorobust audit``: is a results folder what its records say it is?

``render_table`` / ``render_figure`` write a table (CSV, Markdown, LaTeX) or a figure (PNG, PDF) from per-point
records, with a sidecar ``X.meta.json``: the plan spec it was computed from, the sha256 of every output, a
provenance record (code version and dirty flag, resolved config, inputs' hashes, seeds, torch/Python/CUDA
versions, device, wall time), and an **artifact version**: the first 16 hex digits of the sha256 of (code hash,
spec, config, inputs' hashes), so two artifacts with the same version were computed by the same code from the same
data in the same way.

``write_manifest`` lists every artifact of a results folder (:data:`ARTIFACT_GLOBS`; path relative to it, sha256,
bytes) in ``MANIFEST.tsv``. :func:`audit` then checks, and reports one precise line per discrepancy:

1. every file of the manifest exists with its sha256, and no artifact exists that the manifest omits;
2. every other file under the folder is ignored by :data:`IGNORED_GLOBS` (run logs, benchmark timings, model
   weights): a stray note, a hidden file or a leftover ``*.partial`` is a discrepancy;
3. every JSON file is strict JSON (``NaN``/``Infinity``, which Python's ``json`` accepts, are refused), and every
   provenance record (``*.json`` beside records and checkpoints, ``data.json``, ``*.meta.json`` of tables and
   figures) validates against ``sorobust/schemas/*.schema.json``;
4. every sidecar's output hashes match the files, and its recorded inputs match the inputs' current hashes; an
   input recorded by a relative path (a record: relative to the results folder; ``config/published.tsv``: to the
   workflow's working directory) is looked up in the results folder, then in each folder above it, so the audit
   gives the same answer from any working directory;
5. every summary ``.json`` of a certify, attack or curvature record equals the one recomputed from its ``.tsv``
   (:func:`sorobust.summaries.of_records`); ``data.json``'s file hashes give the data hash its provenance records,
   and every record ran on that data;
6. every table re-aggregated from its per-point records equals its CSV cell by cell.

:func:`compare_tables` compares two results folders' tables under a documented tolerance (used by CI to check
the regenerated smoke tables against the committed ones).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import time
from pathlib import Path

from .artifacts import atomic_write, provenance, read_tsv, sha256_file, tree_digest, write_json, write_tsv
from .errors import SorobustError
from .paper import figures as figs
from .paper import tables as tabs

SCHEMA_DIR = Path(__file__).parent / "schemas"
MANIFEST = "MANIFEST.tsv"
#: what a results folder's manifest lists (hidden files and ``*.partial`` never count)
ARTIFACT_GLOBS = ("plan.json", "data.json", "models/**/model.json", "certify/**/*.tsv", "certify/**/*.json",
                  "attack/**/*.tsv", "attack/**/*.json", "curvature/**/*.tsv", "curvature/**/*.json", "tables/*",
                  "figures/*")
#: the only other files a results folder may hold, besides ``MANIFEST.tsv`` itself: run logs, benchmark timings
#: (both machine-specific) and model weights (large, not committed). The audit reports any other file.
IGNORED_GLOBS = ("logs/**/*.log", "benchmarks/**/*.tsv", "models/**/model.pt")
#: record kinds whose ``.json`` summary is recomputed from the ``.tsv`` beside it (the top-level folder)
SUMMARY_KINDS = ("certify", "attack", "curvature")


def _schema(name: str) -> dict:
    """The JSON schema ``sorobust/schemas/NAME.schema.json``."""
    return json.loads((SCHEMA_DIR / f"{name}.schema.json").read_text())


def validator(name: str):
    """A Draft 2020-12 validator of schema ``name`` (``provenance`` or ``artifact``), with the other schema
    registered under its ``$id`` so that the artifact schema's ``$ref`` to the provenance schema resolves."""
    from jsonschema import Draft202012Validator
    from referencing import Registry, Resource

    schemas = {n: _schema(n) for n in ("provenance", "artifact")}
    registry = Registry().with_resources((s["$id"], Resource.from_contents(s)) for s in schemas.values())
    return Draft202012Validator(schemas[name], registry=registry)


class _Constant(str):
    """A ``NaN``/``Infinity``/``-Infinity`` token met while parsing, kept as a marker (see :func:`load_json`)."""


def _first_constant(obj, where=()):
    """(path, token) of the first :class:`_Constant` in ``obj``, or ``None``."""
    if isinstance(obj, _Constant):
        return "/".join(map(str, where)) or "(root)", str(obj)
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else ()
    for k, v in items:
        hit = _first_constant(v, (*where, k))
        if hit is not None:
            return hit
    return None


def load_json(path):
    """Read a JSON file strictly.

    Python's ``json`` reads (and writes) ``NaN``, ``Infinity`` and ``-Infinity``, which are not JSON; a record
    holding one has a non-finite number where a finite one belongs, so it is refused here.

    Raises:
        json.JSONDecodeError: Not JSON.
        ValueError: A non-finite number; the message names where (``provenance/timings/total_s``) and the token.
    """
    obj = json.loads(Path(path).read_text(encoding="utf-8"), parse_constant=_Constant)
    hit = _first_constant(obj)
    if hit is not None:
        raise ValueError(f"non-finite number {hit[1]} at {hit[0]} (JSON has no NaN or Infinity)")
    return obj


def _artifact_version(spec, config, inputs: dict) -> str:
    from .artifacts import code_version

    blob = json.dumps({"code": code_version()["code_hash"], "spec": spec, "config": config,
                       "inputs": {k: v["sha256"] for k, v in sorted(inputs.items())}}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def records_of(spec: dict) -> list[str]:
    """Every per-point record (``*.tsv`` under a :data:`SUMMARY_KINDS` folder, relative to the results folder) a
    table or figure spec names; other files it names (the headline's ``config/published_sound.tsv``) are not
    records."""
    out = []

    def walk(o):
        if isinstance(o, dict):
            for v in o.values():
                walk(v)
        elif isinstance(o, list):
            for v in o:
                walk(v)
        elif isinstance(o, str) and o.endswith(".tsv") and o.split("/", 1)[0] in SUMMARY_KINDS:
            out.append(o)

    walk(spec)
    return sorted(set(out))


def load_plan(path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise SorobustError(f"plan file '{path}' not found; run the workflow's plan rule first") from None


def _sidecar(kind, name, spec, plan, root: Path, outputs: list[Path], t0: float, published=None,
             data_files: dict | None = None) -> dict:
    """The sidecar of a rendered artifact. ``data_files``: further inputs that are not records, {input name:
    (path as recorded, file)} (the headline's published sound results)."""
    ins = {rel: root / rel for rel in records_of(spec)}
    named = {}
    if published is not None:
        ins["published"] = Path(published)
        named["published"] = str(published)
    for key, (shown, f) in (data_files or {}).items():
        ins[key] = Path(f)
        named[key] = str(shown)
    prov = provenance(command=f"sorobust {kind} {name}", config=plan["config"], inputs=ins,
                      seeds={"seed": plan["config"].get("seed")}, timings={"wall_s": time.perf_counter() - t0})
    # record inputs relative to the results folder, so a moved or cloned folder still audits (the published
    # numbers as given: relative to the workflow's working directory)
    for rel, rec in prov["inputs"].items():
        rec["path"] = named.get(rel, rel)
    return {"artifact": name, "kind": kind, "artifact_version": _artifact_version(spec, plan["config"],
                                                                                    prov["inputs"]),
            "outputs": {p.name: sha256_file(p) for p in outputs}, "spec": spec,
            "published": str(published) if published is not None else None, "provenance": prov}


def render_table(name: str, plan: dict, root, published=None, published_sound=None) -> dict:
    """Compute table ``name`` of ``plan`` from the records under ``root``; write tables/NAME.{csv,md,tex,meta.json}.

    The caption (budget and protocol, :func:`sorobust.paper.tables.caption`) heads the Markdown, follows the LaTeX
    title and is in the sidecar. A spec naming published sound results (the headline's ``published_sound``, relative
    to the working directory or a folder above ``root``) reads them from there, or from ``published_sound``; the
    file is an input of the sidecar, hashed like ``published``.
    """
    if name not in plan["tables"]:
        raise SorobustError(f"table '{name}' is not in this plan; its tables are {', '.join(plan['tables'])}")
    t0 = time.perf_counter()
    root = Path(root)
    spec = plan["tables"][name]
    pub = tabs.load_published(published, plan["config"].get("dataset", "mnist")) if published else None
    data_files, sound = {}, None
    if "published_sound" in spec:
        shown = published_sound or spec["published_sound"]
        f = Path(shown) if Path(shown).is_file() else _resolve(root, str(shown))
        if f is None:
            raise SorobustError(f"table {name}: published sound results {shown} not found (looked in the working "
                                f"directory, {root} and the folders above it)")
        sound = tabs.load_published_sound(f)
        data_files["published_sound"] = (shown, f)
    columns, rows = tabs.compute(name, spec, root, pub, sound)
    cap = tabs.caption(name, spec, plan, tabs.record_counts(spec, root))
    out = root / "tables"
    paths = [out / f"{name}.csv", out / f"{name}.md", out / f"{name}.tex"]
    for p, text in zip(paths, [tabs.to_csv(columns, rows), tabs.to_markdown(name, columns, rows, cap["text"]),
                               tabs.to_latex(name, columns, rows, cap["text"])]):
        with atomic_write(p) as f:
            f.write(text)
    meta = _sidecar("table", name, spec, plan, root, paths, t0, published, data_files)
    meta["caption"] = cap
    write_json(out / f"{name}.meta.json", meta)
    return meta


def render_figure(name: str, plan: dict, root) -> dict:
    if name not in plan["figures"]:
        raise SorobustError(f"figure '{name}' is not in this plan; its figures are {', '.join(plan['figures'])}")
    t0 = time.perf_counter()
    root = Path(root)
    spec = plan["figures"][name]
    data = figs.compute(name, spec, root, dataset=plan["config"].get("dataset", "mnist"))
    paths = figs.draw(name, data, root / "figures" / name, title=spec.get("network", f"profile {plan['profile']}"))
    meta = _sidecar("figure", name, spec, plan, root, paths, t0)
    meta["data"] = data
    write_json(root / "figures" / f"{name}.meta.json", meta)
    return meta


# ---------------------------------------------------------------------------------------------- manifest


def _matching(root: Path, globs) -> set[Path]:
    """Files under ``root`` matching any of ``globs``, except hidden ones (a part of the path starting with ``.``)
    and ``*.partial`` leftovers of interrupted runs, which match no rule."""
    found = set()
    for g in globs:
        for p in root.glob(g):
            rel = p.relative_to(root)
            if p.is_file() and not any(part.startswith(".") for part in rel.parts) and ".partial" not in p.name:
                found.add(p)
    return found


def _artifacts(root: Path) -> list[Path]:
    """Every artifact of a results folder (:data:`ARTIFACT_GLOBS`), sorted."""
    return sorted(_matching(root, ARTIFACT_GLOBS))


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
    """All discrepancies of the results folder ``root``, one line each (empty when it audits clean).

    The checks are the module docstring's; the answer does not depend on the working directory.

    Args:
        root: The results folder (``results/{profile}``).
        published: The published numbers (``config/published.tsv``) to check the tables against, instead of the
            file their sidecars record; its sha256 must still be the recorded one.
    """
    root = Path(root)
    man = root / MANIFEST
    if not man.is_file():
        return [f"{man}: no manifest; run `sorobust manifest {root}` (the workflow's manifest rule)"]
    problems, listed = _check_manifest(root)
    problems += _check_files(root, listed)
    problems += _check_json(root, published)
    return problems


def _check_manifest(root: Path) -> tuple[list[str], set[str]]:
    """Every file the manifest lists exists with its sha256; every artifact is listed. Returns (problems, the
    listed paths)."""
    problems: list[str] = []
    listed = set()
    rows, bad = _read_manifest(root / MANIFEST)
    problems += bad
    for r in rows:
        listed.add(r["path"])
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
    return problems, listed


def _read_manifest(path: Path) -> tuple[list[dict], list[str]]:
    """The manifest's rows as strings (a sha256 of digits only must not become a number), and a problem for each
    line that is not ``path<TAB>sha256<TAB>bytes``."""
    rows, bad = [], []
    lines = path.read_text(encoding="utf-8").splitlines()
    if not lines or lines[0].split("\t") != ["path", "sha256", "bytes"]:
        return [], [f"{MANIFEST}: header is not path, sha256, bytes; rewrite it with `sorobust manifest`"]
    for i, line in enumerate(lines[1:], start=2):
        fields = line.split("\t")
        if len(fields) != 3 or not re.fullmatch(r"[0-9a-f]{64}", fields[1]):
            bad.append(f"{MANIFEST}: line {i} is not a path, a sha256 and a size")
        else:
            rows.append({"path": fields[0], "sha256": fields[1]})
    return rows, bad


def _check_files(root: Path, listed: set[str]) -> list[str]:
    """Every file under ``root`` is an artifact listed in the manifest, the manifest itself, or ignored by
    :data:`IGNORED_GLOBS`; anything else (notes, hidden files, ``*.partial``) is reported."""
    artifacts = {p.relative_to(root).as_posix() for p in _artifacts(root)}
    ignored = {p.relative_to(root).as_posix() for p in _matching(root, IGNORED_GLOBS)}
    problems = [f"{rel}: listed in {MANIFEST} but not an artifact (sorobust.audit.ARTIFACT_GLOBS)"
                for rel in sorted(listed - artifacts) if (root / rel).is_file()]
    rule = ", ".join(IGNORED_GLOBS)
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            rel = (Path(dirpath) / name).relative_to(root).as_posix()
            if rel == MANIFEST or rel in artifacts or rel in listed or rel in ignored:
                continue
            what = ("leftover of an interrupted run" if ".partial" in name
                    else "hidden file" if any(part.startswith(".") for part in rel.split("/")) else "stray file")
            problems.append(f"{rel}: {what}, neither an artifact in {MANIFEST} nor ignored ({rule}); remove it")
    return problems


def _resolve(root: Path, path: str) -> Path | None:
    """The file a provenance record's input path names: an absolute path as is; a relative one in the results
    folder or the nearest folder above it that has it (``config/published.tsv`` is relative to the workflow's
    working directory, two levels above ``results/{profile}``); ``None`` when there is none."""
    p = Path(path)
    if p.is_absolute():
        return p if p.is_file() else None
    base = root.resolve()
    for folder in (base, *base.parents):
        if (folder / p).is_file():
            return folder / p
    return None


def _check_json(root: Path, published=None) -> list[str]:
    """Strict JSON and schemas of every JSON artifact, then each sidecar's outputs, inputs and table, and each
    record summary against its TSV."""
    import jsonschema

    problems: list[str] = []
    prov_v, art_v = validator("provenance"), validator("artifact")
    data_of: dict[str, str] = {}  # the data hash every valid provenance record ran on
    for p in _artifacts(root):
        if p.suffix != ".json":
            continue
        rel = p.relative_to(root).as_posix()
        try:
            obj = load_json(p)
        except json.JSONDecodeError as e:
            problems.append(f"{rel}: not valid JSON ({e.msg} at line {e.lineno})")
            continue
        except ValueError as e:
            problems.append(f"{rel}: {e}")
            continue
        if rel == "plan.json":
            continue
        is_meta = p.name.endswith(".meta.json")
        err = jsonschema.exceptions.best_match((art_v if is_meta else prov_v).iter_errors(
            obj if is_meta else obj.get("provenance") if isinstance(obj, dict) else None))
        if err is not None:
            where = "/".join(str(x) for x in err.absolute_path) or "(root)"
            problems.append(f"{rel}: provenance record invalid at {where}: {err.message}")
            continue
        if "data" in obj["provenance"]["inputs"]:
            data_of[rel] = obj["provenance"]["inputs"]["data"]["sha256"]
        if is_meta:
            problems += _check_sidecar(root, rel, obj, published)
        elif rel == "data.json":
            problems += _check_data(obj)
        elif rel.split("/", 1)[0] in SUMMARY_KINDS:
            problems += _check_summary(root, rel, obj)
    described = data_of.get("data.json")
    if described is not None:
        problems += [f"{rel}: ran on data {digest[:12]}…, data.json describes {described[:12]}…"
                     for rel, digest in sorted(data_of.items()) if digest != described]
    return problems


def _check_data(data: dict) -> list[str]:
    """``data.json``'s file hashes against the data hash of its own provenance record (a directory's hash is the
    :func:`sorobust.artifacts.tree_digest` of its files)."""
    files, recorded = data.get("files"), data["provenance"]["inputs"].get("data", {}).get("sha256")
    if not isinstance(files, dict) or recorded is None:
        return ["data.json: no file hashes (files) or no data input in its provenance record"]
    try:
        digest = tree_digest(files)
    except (AttributeError, TypeError, UnicodeEncodeError) as e:
        return [f"data.json: file hashes unreadable ({e})"]
    if digest != recorded:
        return [f"data.json: its file hashes give the data hash {digest[:12]}…, its provenance records "
                f"{recorded[:12]}… (edited after the run)"]
    return []


def _check_sidecar(root: Path, rel: str, meta: dict, published=None) -> list[str]:
    """A table's or figure's outputs and inputs against their recorded hashes, and a table against its records."""
    problems = []
    base = (root / rel).parent
    for fname, digest in meta["outputs"].items():
        f = base / fname
        if not f.is_file():
            problems.append(f"{rel}: output {fname} missing")
        elif sha256_file(f) != digest:
            problems.append(f"{(base / fname).relative_to(root).as_posix()}: sha256 differs from "
                            f"{rel} (edited after rendering)")
    pub_path = sound_path = None
    for name, rec in meta["provenance"]["inputs"].items():
        if name == "published" and published is not None:
            f = Path(published) if Path(published).is_file() else None
            shown = str(published)
        else:
            f, shown = _resolve(root, rec["path"]), rec["path"]
        if f is None:
            hint = "; give its location with --published" if name == "published" else ""
            problems.append(f"{rel}: input {shown} missing (looked in {root} and the folders above it){hint}")
        elif sha256_file(f) != rec["sha256"]:
            problems.append(f"{rel}: input {shown} changed since the artifact was rendered")
        elif name == "published":
            pub_path = f
        elif name == "published_sound":
            sound_path = f
    if meta["kind"] == "table":
        if meta.get("published") is not None and pub_path is None:
            return problems  # the published columns cannot be re-aggregated without the very file (reported)
        if "published_sound" in meta["provenance"]["inputs"] and sound_path is None:
            return problems  # nor the published sound rows (reported)
        problems += _reaggregate(root, meta, pub_path, sound_path)
    return problems


def _same(a, b) -> bool:
    """Equal as recorded values: two numbers to within float64 rounding (1e-12 relative), anything else exactly
    (``None`` only to ``None``)."""
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-300)
    return a == b


def _check_summary(root: Path, rel: str, summary: dict) -> list[str]:
    """A certify/attack/curvature summary against the one :func:`sorobust.summaries.of_records` computes from the
    ``.tsv`` beside it (the radius, wall time and method are the provenance record's)."""
    from .summaries import of_records

    tsv = (root / rel).with_suffix(".tsv")
    tsv_rel = tsv.relative_to(root).as_posix()
    if not tsv.is_file():
        return [f"{rel}: summary without its per-point records {tsv_rel}"]
    prov = summary["provenance"]
    try:
        want = of_records(rel.split("/", 1)[0], read_tsv(tsv), rho=prov["config"].get("rho"),
                          time_s=prov["timings"].get("total_s"), method=prov["config"].get("method"))
    except (KeyError, TypeError, ValueError) as e:
        return [f"{rel}: cannot recompute the summary from {tsv_rel} ({type(e).__name__}: {e})"]
    missing = object()
    return [f"{rel}: {k} is {summary.get(k, 'missing')}, its records {tsv_rel} give {v}"
            for k, v in want.items() if summary.get(k, missing) is missing or not _same(summary[k], v)]


def _reaggregate(root: Path, meta: dict, pub_path: Path | None = None, sound_path: Path | None = None) -> list[str]:
    """Table ``meta["artifact"]`` recomputed from its records (and the published numbers at ``pub_path`` and the
    published sound results at ``sound_path``, when it was rendered with them) against its CSV, cell by cell."""
    name = meta["artifact"]
    csv_path = root / "tables" / f"{name}.csv"
    if not csv_path.is_file():
        return [f"tables/{name}.csv: missing"]
    try:
        dataset = meta["provenance"]["config"].get("dataset", "mnist")
        pub = tabs.load_published(pub_path, dataset) if pub_path is not None else None
        sound = tabs.load_published_sound(sound_path) if sound_path is not None else None
        columns, rows = tabs.compute(name, meta["spec"], root, pub, sound)
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
    differences are machine-dependent and not compared, nor is the ``machine`` that timed them; labels must be
    equal.
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
                if base.startswith("t_") or c.startswith(("paper_", "diff_")) or c == "machine":
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
