"""The paper's tables, aggregated from per-point records (never edited by hand).

Each table is a pure function of the per-point record files named in the plan (``sorobust.workflow``): a list of
rows whose measured cells come from the aggregates below, and, where the paper published the same cell
(``config/published.tsv``, transcribed from paper.md §3), the published value and the difference
(measured − published) beside it. Rendered as CSV (the machine-readable artifact that ``sorobust audit``
re-computes cell by cell), Markdown and LaTeX.

Aggregates (percentages in %, certificates in ℓ2 pixel units, times in seconds per image):

* ``std_acc``: clean accuracy of the points; ``certified_acc``: points that are correct **and** certified at ρ
  (CRC: certificate > ρ and the solver converged; baselines: certified radius > ρ), over all points;
* ``*_mean``: mean certificate (CRC) or certified radius (CROWN, CNN-Cert) over the correctly classified points
  (the paper averages over correctly classified images);
* ``t_*``: mean seconds per image of the certifier (including points it skipped as misclassified);
* ``certificate_success``: fraction of correctly classified points whose CRC dual solution is primal-feasible
  with f(x*) = 0 ("primal = dual", the record's ``exact`` flag); ``attack_success``: fraction of correctly
  classified points where the second-order attack's x* lies on the sphere ‖x* − x⁰‖ = ρ;
* ``empirical_robust_acc``: correct and not broken by the table's attack within ρ (ℓ2 PGD; AutoAttack-ℓ2 in the
  headline table).

**The headline table** (issue 10): for each Table 1 model of one depth, clean accuracy, certified accuracy at
Table 1's ρ under the reference protocol (CRC: the runner-up class only) and under the sound all-class certificate
(the baselines have one certificate, their own sound one, as in Table 1, so both columns hold it and say so), and
AutoAttack-ℓ2 robust accuracy at the same ρ, which brackets the truth: certified ≤ robust ≤ empirical. The bracket
is checked point by point (:func:`bracket`): a point that the attack breaks at a distance below its sound
certificate is a soundness bug, and the table is not rendered (:class:`SoundnessViolation`, naming the points).
Beside the measured rows stand the published sound results (``config/published_sound.tsv``), labelled "published,
not rerun" with their citations.

**Captions** (:func:`caption`) are derived from the plan, never written per table: each table's Markdown, LaTeX
and sidecar state the training budget of its models (epochs, training images, model selection), the test points
behind each kind of column, and the protocol of each record (sound all-class, reference runner-up, empirical
attack, probabilistic training bounds where a model used one).

**Layouts.** A table spec of a plan carries ``layout`` (:data:`sorobust.workflow.TABLE_LAYOUT`). From layout 2 on,
timing columns (``t_*``) stand beside the paper's GPU seconds without a difference (the machines are not
comparable) and a ``machine`` column names the device and threads of the records that were timed (their provenance).
Specs without the key (plans written before) render as layout 1, so committed results still re-aggregate unchanged.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

import pandas as pd
from tabulate import tabulate

from ..artifacts import read_tsv
from .. import vocab
from ..errors import SorobustError

PCT = {"std_acc", "certified_acc", "accuracy", "certificate_success", "attack_success", "empirical_robust_acc",
       "certified_runner_up", "certified_all", "certified_ibp", "certified_crown", "improvement",
       "certified_reference", "certified_sound"}
#: columns that count points (rendered as integers)
COUNTS = {"broken_certified", "broken_reference", "n_bracketed"}
#: input keys whose records' seconds per image a table reports (their machine is named beside them, layout ≥ 2)
TIMED = {"table2": ("crown", "crc")}
#: tables whose cells are published under another table's key: {table: (published table, {column: its column})}
PUBLISHED_AS = {"headline": ("table1", {"std_acc": "std_acc", "certified_reference": "certified_acc"})}
#: what a table's own columns mean, appended to its caption
LEGENDS = {"headline": "certified ≤ robust ≤ empirical is checked point by point on the n_bracketed points both the "
                       "certificate's and the attack's records hold: broken_certified counts points certified by the "
                       "sound certificate that the attack breaks (0, else the table is not rendered: a soundness "
                       "bug), broken_reference those certified by the reference protocol that the attack breaks"}
#: the columns of config/published_sound.tsv, in order
SOUND_COLUMNS = ("method", "model", "dataset", "rho", "certified_acc", "authors", "title", "venue", "year", "arxiv",
                 "note")


class SoundnessViolation(SorobustError, ValueError):
    """A point broken by an attack at a distance below its sound certificate: a bug in the certificate, the
    attack's verification or the records, never a result (issue 10). The message names the points."""


def _pct(x: float) -> float:
    return 100.0 * float(x)


def _mean(s) -> float:
    """Mean of a Series (``nan`` when empty, as a float)."""
    return float(s.mean()) if len(s) else float("nan")


def _load(root: Path, rel: str) -> pd.DataFrame:
    """A per-point record as a DataFrame, its cells parsed by :func:`sorobust.artifacts.read_tsv` (every float is
    the one written, so a re-aggregation by the audit is exact; an empty cell is ``None``)."""
    return frame(read_tsv(Path(root) / rel))


def frame(rows) -> pd.DataFrame:
    """Per-point rows (a DataFrame, or dicts as :func:`sorobust.artifacts.read_tsv` returns them) as a DataFrame."""
    return rows if isinstance(rows, pd.DataFrame) else pd.DataFrame(list(rows))


def _flag(s: pd.Series) -> pd.Series:
    """A 0/1 column as booleans (an empty cell is false)."""
    return s.fillna(0).astype(bool)


def certified(rows: pd.DataFrame, rho: float) -> pd.Series:
    """Per point, certified at ``rho`` by the one rule :func:`sorobust.summaries.certified_at` (correct, certificate
    > ρ, solver converged; a record without a ``converged`` value is a certifier without iterations)."""
    from ..summaries import certified_at

    conv = rows["converged"].fillna(1).astype(bool) if "converged" in rows else None
    return certified_at(_flag(rows["correct"]), rows["certificate"].astype(float), conv, float(rho))


def std_acc(rows) -> float:
    return _pct(_mean(_flag(rows["correct"])))


def certified_acc(rows, rho: float) -> float:
    return _pct(_mean(certified(rows, rho)))


def certified_union(rho: float, *tables) -> float:
    """Certified by any of several sound certifiers of the same points (a point certified by one is robust)."""
    return certified_acc(union_rows(*tables), rho)


def mean_certificate(rows) -> float:
    return _mean(rows.loc[_flag(rows["correct"]), "certificate"].astype(float))


def mean_time(rows) -> float:
    return _mean(rows["time_s"].astype(float))


def exact_fraction(rows) -> float:
    return _pct(_mean(_flag(rows.loc[_flag(rows["correct"]), "exact"])))


def attack_success(rows) -> float:
    return _pct(_mean(_flag(rows.loc[_flag(rows["correct"]), "success"])))


def robust_acc(rows) -> float:
    return _pct(_mean(_flag(rows["robust"])))


def union_rows(*tables) -> pd.DataFrame:
    """Per point, several sound certifiers of the same points as one: its certificate is the largest certificate
    of a record whose solver converged (a point certified by one sound certifier is robust, so the union is sound
    too), and it is certified at ρ iff one of the records certifies it at ρ."""
    tables = [frame(t) for t in tables]
    if len({len(t) for t in tables}) != 1:
        raise ValueError(f"records of different points ({sorted({len(t) for t in tables})} of them); they cannot "
                         f"be combined")
    first = tables[0]
    for t in tables[1:]:
        same = (t["idx"].to_numpy() == first["idx"].to_numpy()) & (t["label"].to_numpy() == first["label"].to_numpy())
        if not same.all():
            raise ValueError(f"records of different points at idx {first['idx'].to_numpy()[~same][0]}; they cannot "
                             f"be combined")

    def usable(t):
        ok = t["converged"].fillna(1).astype(bool) if "converged" in t else True
        return t["certificate"].astype(float).where(ok, float("-inf"))

    out = first[["idx", "label", "pred", "correct", "target"]].copy()
    out["certificate"] = pd.concat([usable(t) for t in tables], axis=1).max(axis=1)
    return out


def bracket(sound, attack, rho: float, reference=None, where: str = "") -> dict:
    """Check certified ≤ robust ≤ empirical point by point on the points both records hold (matched by ``idx``).

    A correctly classified point that the attack breaks (its float64-verified example is misclassified at distance
    ``d`` ≤ ρ) must have a sound certificate ≤ ``d``: every point of the ℓ2 ball of radius ``certificate`` keeps
    the label, and the segment from x⁰ to the example leaves that ball's label region only beyond it (continuity).
    So a broken point that is certified at ρ, or whose certificate exceeds ``d``, is a soundness violation. The
    reference protocol's certificate bounds the distance to the runner-up class's boundary only, so a broken point
    it certifies is no violation (it is counted, ``broken_reference``), unless the example lands in that very class
    at a distance below that certificate (z_y − z_t changes sign on the segment).

    Args:
        sound: per-point rows of the sound certificate (``idx label pred correct certificate`` [``converged``]).
        attack: per-point rows of the attack (``idx label pred correct success distance pred_adv``).
        rho: the radius of the attack and of the certified columns.
        reference: per-point rows of the reference-protocol certificate (with ``target``), or ``None``.
        where: what the records are, for the error message.

    Returns:
        ``{"n_bracketed": points in both, "broken_certified": certified by the sound certificate and broken (0),
        "broken_reference": certified by the reference protocol and broken, or None}``.

    Raises:
        SoundnessViolation: A violation; the message names every violating point.
        ValueError: The records disagree on a point's label or prediction (records of different points or models).
    """
    sound, attack = frame(sound), frame(attack)
    reference = None if reference is None else frame(reference)
    s = sound.assign(cert_at=certified(sound, rho))[["idx", "label", "pred", "correct", "certificate", "cert_at"]]
    m = s.merge(attack[["idx", "label", "pred", "correct", "success", "distance", "pred_adv"]], on="idx",
                suffixes=("", "_a"), sort=True)
    differ = (m["label"] != m["label_a"]) | (m["pred"] != m["pred_a"])
    if differ.any():
        r = m[differ].iloc[0]
        raise ValueError(f"{where}: point {r['idx']} is (label {r['label']}, prediction {r['pred']}) in the "
                         f"certificate's records and ({r['label_a']}, {r['pred_a']}) in the attack's")
    broken = _flag(m["correct"]) & _flag(m["correct_a"]) & _flag(m["success"])
    d = m["distance"].astype(float)
    bad_sound = broken & (m["cert_at"] | (d < m["certificate"].astype(float)))
    bad = [(int(r.idx), f"idx {r.idx} (sound certificate {float(r.certificate):.6g}, certified {bool(r.cert_at)}; "
                        f"broken at distance {float(r.distance):.6g} into class {r.pred_adv})")
           for r in m[bad_sound].itertuples()]
    broken_ref = None
    if reference is not None:
        ref = reference.assign(ref_at=certified(reference, rho))[["idx", "target", "certificate", "ref_at"]]
        mr = m[broken].merge(ref, on="idx", suffixes=("", "_r"), sort=True)
        broken_ref = int(mr["ref_at"].sum())
        into = (mr["pred_adv"] == mr["target"]) & (mr["distance"].astype(float) < mr["certificate_r"].astype(float))
        bad += [(int(r.idx), f"idx {r.idx} (runner-up certificate {float(r.certificate_r):.6g} against class "
                             f"{r.target}; broken into that class at distance {float(r.distance):.6g})")
                for r in mr[into].itertuples()]
    if bad:
        bad.sort(key=lambda b: b[0])
        shown = 20
        more = f"; and {len(bad) - shown} more" if len(bad) > shown else ""
        raise SoundnessViolation(
            f"{where}: the attack breaks {len(bad)} point(s) below a certificate, a soundness bug to fix before any "
            f"table: idx {', '.join(str(i) for i, _ in bad)}; {'; '.join(w for _, w in bad[:shown])}{more}")
    return {"n_bracketed": len(m), "broken_certified": int((broken & m["cert_at"]).sum()),
            "broken_reference": broken_ref}


# -------------------------------------------------------------------------------------------------- tables


def _table1(row, L, rho):
    ins = row["inputs"]
    if "crc" in ins:
        c = L(ins["crc"])
        return {"certifier": "CRC (all classes)", "std_acc": std_acc(c), "certified_acc": certified_acc(c, rho)}
    if "coap" in ins:
        c = L(ins["coap"])
        return {"certifier": "COAP exact l2 dual", "std_acc": std_acc(c), "certified_acc": certified_acc(c, rho)}
    ibp, crown = L(ins["ibp"]), L(ins["crown"])
    return {"certifier": "IBP or CROWN", "std_acc": std_acc(ibp), "certified_acc": certified_union(rho, ibp, crown),
            "certified_ibp": certified_acc(ibp, rho), "certified_crown": certified_acc(crown, rho)}


def _table2(row, L, rho):
    crc, crown = L(row["inputs"]["crc"]), L(row["inputs"]["crown"])
    return {"std_acc": std_acc(crc), "certified_acc": certified_acc(crc, rho), "crown_mean": mean_certificate(crown),
            "crc_mean": mean_certificate(crc), "t_crown": mean_time(crown), "t_crc": mean_time(crc)}


def _table3(row, L, rho):
    crc, att = L(row["inputs"]["crc"]), L(row["inputs"]["attack"])
    return {"accuracy": std_acc(crc), "certificate_success": exact_fraction(crc),
            "attack_success": attack_success(att)}


def _table4(row, L, rho):
    return {"crc_global": mean_certificate(L(row["inputs"]["crc"])),
            "crc_local": mean_certificate(L(row["inputs"]["crc_local"]))}


def _table5(row, L, rho):
    crc, cc = L(row["inputs"]["crc"]), L(row["inputs"]["cnncert"])
    a, b = mean_certificate(crc), mean_certificate(cc)
    return {"std_acc": std_acc(crc), "certified_acc": certified_acc(crc, rho), "cnncert_mean": b, "crc_mean": a,
            "improvement": _pct((a - b) / b) if b and b == b else float("nan")}


def _iclr3(row, L, rho):
    crc, crown, pgd = L(row["inputs"]["crc"]), L(row["inputs"]["crown"]), L(row["inputs"]["pgd"])
    return {"std_acc": std_acc(crc), "empirical_robust_acc": robust_acc(pgd), "certified_acc": certified_acc(crc, rho),
            "crown_mean": mean_certificate(crown), "crc_mean": mean_certificate(crc)}


def _protocol(row, L, rho):
    ru, al = L(row["inputs"]["runner_up"]), L(row["inputs"]["all"])
    a, b = certified_acc(ru, rho), certified_acc(al, rho)
    return {"std_acc": std_acc(al), "certified_runner_up": a, "certified_all": b, "gap": a - b}


def _headline(row, L, rho):
    """A headline row: the reference protocol's and the sound certified accuracy side by side (a baseline's one
    sound certificate in both, labelled), AutoAttack's robust accuracy, and the bracket check (:func:`bracket`)."""
    ins = row["inputs"]
    if "crc" in ins:
        sound, ref = L(ins["crc"]), L(ins["crc_runner_up"])
        labels = ("CRC, runner-up class only (reference protocol)", "CRC, all classes")
    elif "coap" in ins:
        sound = ref = L(ins["coap"])
        labels = ("= sound (COAP has one certificate, as in Table 1)", "COAP exact l2 dual, all classes")
    else:
        sound = ref = union_rows(L(ins["ibp"]), L(ins["crown"]))
        labels = ("= sound (IBP or CROWN, as in Table 1)", "IBP or CROWN, all classes")
    att = L(ins["autoattack"])
    check = bracket(sound, att, rho, ref if ref is not sound else None, where=f"headline row {row['model']}")
    return {"source": "rerun here", "reference_protocol": labels[0], "sound_certificate": labels[1],
            "std_acc": std_acc(sound), "certified_reference": certified_acc(ref, rho),
            "certified_sound": certified_acc(sound, rho), "empirical_robust_acc": robust_acc(att), **check,
            "citation": None}


def load_published_sound(path) -> list[dict]:
    """The published sound results of ``config/published_sound.tsv`` (tab-separated, ``#`` comment lines, the
    columns :data:`SOUND_COLUMNS`), each with ``certified_acc`` and ``rho`` as floats, ``year`` an int and a
    one-line ``citation`` (authors, title, venue, year, arXiv id).

    Raises:
        ValueError: A wrong header, a missing field or a value out of range; the message names the line.
    """
    import csv

    lines = [(i, ln) for i, ln in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1)
             if ln.strip() and not ln.startswith("#")]
    if not lines:
        raise ValueError(f"{path}: no header line")
    header = lines[0][1].split("\t")
    if tuple(header) != SOUND_COLUMNS:
        raise ValueError(f"{path}:{lines[0][0]}: columns {header}, expected {list(SOUND_COLUMNS)}")
    out = []
    for lineno, fields in zip([i for i, _ in lines[1:]], csv.reader([ln for _, ln in lines[1:]], delimiter="\t",
                                                                     quoting=csv.QUOTE_NONE)):
        if len(fields) != len(SOUND_COLUMNS):
            raise ValueError(f"{path}:{lineno}: {len(fields)} fields, expected {len(SOUND_COLUMNS)}")
        r = dict(zip(SOUND_COLUMNS, fields))
        for k in ("method", "model", "dataset", "authors", "title", "venue"):
            if not r[k].strip():
                raise ValueError(f"{path}:{lineno}: empty {k}")
        try:
            r["certified_acc"], r["rho"], r["year"] = float(r["certified_acc"]), float(r["rho"]), int(r["year"])
        except ValueError as e:
            raise ValueError(f"{path}:{lineno}: {e}") from None
        if not (0.0 <= r["certified_acc"] <= 100.0 and math.isfinite(r["rho"]) and r["rho"] > 0):
            raise ValueError(f"{path}:{lineno}: certified_acc must be a percentage and rho > 0")
        if r["arxiv"] and not r["arxiv"].startswith("arXiv:"):
            raise ValueError(f"{path}:{lineno}: arxiv '{r['arxiv']}' is not 'arXiv:NNNN.NNNNN'")
        r["citation"] = ", ".join(x for x in (r["authors"], f"\"{r['title']}\"", r["venue"], r["arxiv"]) if x)
        out.append(r)
    return out


def _published_sound_rows(spec, sound) -> list[dict]:
    """The headline's "published, not rerun" rows: the published sound results at the table's ρ on its dataset."""
    return [{"network": r["model"], "training": r["method"], "gamma": r["method"], "source": "published, not rerun",
             "sound_certificate": "published sound certificate", "certified_sound": r["certified_acc"],
             "citation": r["citation"]}
            for r in sound if math.isclose(r["rho"], spec["rho"]) and r["dataset"] == spec.get("dataset", "mnist")]


TABLES = {
    "table1": ("Certified robust accuracy at ρ = 1.58: CRT vs CROWN-IBP vs COAP (ICML Table 1)",
               ["network", "training"], _table1),
    "table2": ("CROWN vs CRC: mean certificates (runner-up target) and seconds per image (ICLR Table 2)",
               ["network", "training"], _table2),
    "table3": ("How often primal = dual: CRC certificate and second-order attack (ICML Table 3)",
               ["network", "gamma"], _table3),
    "table4": ("CRC with global vs local curvature bounds, mean certificate (ICML Table 4)",
               ["network", "training"], _table4),
    "table5": ("CRC vs CNN-Cert on the single-hidden-layer conv net (ICML Table 5)", ["network", "gamma"],
               _table5),
    "iclr_table3": ("CRT vs PGD vs TRADES (ICLR Table 3)", ["network", "training"], _iclr3),
    "protocol": ("Reference protocol (runner-up class only) beside the sound all-class CRC certificate",
                 ["network", "training"], _protocol),
    "headline": ("The headline, soundly: certified (reference protocol and sound) and AutoAttack robust accuracy of "
                 "the Table 1 models, beside published sound results", ["network", "training"], _headline),
}


#: the dataset of published numbers whose file has no ``dataset`` column: the paper's tables are all MNIST
PUBLISHED_DEFAULT_DATASET = "mnist"


def published_dataset(row: dict) -> str:
    """The dataset a published number is of: its ``dataset`` column, else :data:`PUBLISHED_DEFAULT_DATASET`."""
    return str(row.get("dataset") or PUBLISHED_DEFAULT_DATASET)


def load_published(path, dataset: str = PUBLISHED_DEFAULT_DATASET) -> dict:
    """{(table, depth, activation, training, column): value} of ``dataset`` from ``config/published.tsv``.

    Published numbers are keyed by dataset (issue 12): a run on another dataset (Fashion-MNIST) gets none of the
    paper's MNIST numbers beside its own. A file without a ``dataset`` column holds MNIST numbers."""
    dataset = str(vocab.coerce(vocab.Dataset, dataset))
    out = {}
    for r in read_tsv(path):
        if published_dataset(r) != dataset:
            continue
        out[(r["table"], str(r["depth"]), r["activation"], str(r["training"]), r["column"])] = float(r["value"])
    return out


def compute(name: str, spec: dict, root, published: dict | None = None,
            sound: list | None = None) -> tuple[list[str], list[dict]]:
    """Rows of table ``name`` from its plan ``spec`` (records under ``root``): (columns, rows).

    Args:
        published: the paper's numbers (:func:`load_published`), put beside the measured cells.
        sound: the published sound results (:func:`load_published_sound`); required by a spec that names them (the
            headline's ``published_sound``).

    Raises:
        SoundnessViolation: the headline's bracket fails (:func:`bracket`).
        ValueError: a spec naming published sound results without them.
    """
    _, label_cols, fn = TABLES[name]
    layout = int(spec.get("layout", 1))
    ptable, pcols = PUBLISHED_AS.get(name, (name, None))
    cache = {}

    def L(rel):
        if rel not in cache:
            cache[rel] = _load(root, rel)
        return cache[rel]

    rows, columns = [], list(label_cols)
    for row in spec["rows"]:
        key = row["key"]
        cells = {"network": row["network"], "training": row["training"], "gamma": row["training"]}
        measured = fn(row, L, row.get("rho", spec.get("rho")))
        if layout >= 2 and name in TIMED:
            measured["machine"] = machine(root, [row["inputs"][k] for k in TIMED[name] if k in row["inputs"]])
        for col, v in measured.items():
            if col not in columns:
                columns.append(col)
            cells[col] = v
            if v is None or isinstance(v, str) or col in COUNTS:
                continue
            pcol = pcols.get(col) if pcols is not None else col
            pk = (ptable, str(key["depth"]), key["activation"], str(key["training"]), pcol)
            if published is not None and pk in published:
                timing = layout >= 2 and col.startswith("t_")  # the paper's GPU seconds: shown, never subtracted
                for extra in (f"paper_{col}",) + (() if timing else (f"diff_{col}",)):
                    if extra not in columns:
                        columns.append(extra)
                cells[f"paper_{col}"] = published[pk]
                if not timing:
                    cells[f"diff_{col}"] = v - published[pk]
        rows.append(cells)
    if "published_sound" in spec:
        if sound is None:
            raise ValueError(f"table {name} names the published sound results {spec['published_sound']}; "
                             f"pass them (load_published_sound)")
        for cells in _published_sound_rows(spec, sound):
            columns += [c for c in cells if c not in columns]
            rows.append(cells)
    for r in rows:
        for c in columns:
            r.setdefault(c, None)
    # keep each measured column next to its paper value and difference
    ordered = list(label_cols)
    for c in columns:
        if c in ordered or c.startswith(("paper_", "diff_")) or c == "gamma":
            continue
        ordered.append(c)
        ordered += [x for x in (f"paper_{c}", f"diff_{c}") if x in columns]
    return ordered, rows


def machine(root, rels) -> str:
    """The machine that timed the records ``rels``: device (CPU model or CUDA device) and threads, from the
    provenance of each record's summary ``.json``; distinct machines joined by " / "; "unknown" without one."""
    import json

    seen = []
    for rel in rels:
        p = (Path(root) / rel).with_suffix(".json")
        try:
            env = json.loads(p.read_text())["provenance"]["environment"]
            m = f"{env['device']}, {env['num_threads']} thread{'s' if env['num_threads'] != 1 else ''}"
        except (OSError, ValueError, KeyError, TypeError):
            m = "unknown"
        if m not in seen:
            seen.append(m)
    return " / ".join(seen) if seen else "unknown"


def fmt(v, digits: int = 6) -> str:
    if v is None:
        return ""
    if isinstance(v, str):
        return v
    if isinstance(v, float) and math.isnan(v):
        return "nan"
    return f"{v:.{digits}g}"


def to_csv(columns, rows) -> str:
    """The table as CSV (pandas' writer; cells formatted by :func:`fmt`, the text the audit compares)."""
    frame = pd.DataFrame([[fmt(r[c]) for c in columns] for r in rows], columns=list(columns), dtype=object)
    return frame.to_csv(index=False, lineterminator="\n")


def read_csv(text: str) -> tuple[list[str], list[list[str]]]:
    rows = list(csv.reader(io.StringIO(text)))
    return rows[0], rows[1:]


def _short(v, col) -> str:
    if v is None:
        return "–"
    if isinstance(v, str):
        return v
    if isinstance(v, float) and math.isnan(v):
        return "n/a"
    if col in COUNTS:
        return f"{v:d}" if isinstance(v, int) else f"{v:g}"
    if col.startswith("diff_"):
        return f"{v:+.2f}" if _is_pct(col) else f"{v:+.4f}"
    return f"{v:.2f}" if _is_pct(col) else f"{v:.4f}"


def _is_pct(col: str) -> bool:
    return col.removeprefix("paper_").removeprefix("diff_") in PCT


def _header(col: str) -> str:
    unit = " (%)" if _is_pct(col) else ""
    if col.startswith("paper_t_"):
        return f"paper {col[6:]} (s/image, paper's GPU)"
    if col.startswith("t_"):
        return f"{col} (s/image)"
    if col.startswith("paper_"):
        return f"paper {col[6:]}{unit}"
    if col.startswith("diff_"):
        return f"Δ {col[5:]}"
    return f"{col}{unit}"


def _cells(columns, rows, escape=lambda x: x) -> list[list[str]]:
    return [[escape(_short(r[c], c)) for c in columns] for r in rows]


def to_markdown(name, columns, rows, note: str = "") -> str:
    """The table as Markdown (tabulate's ``github`` format) under its title and ``note`` (the caption)."""
    title = TABLES[name][0]
    lines = [f"### {title}", ""]
    if note:
        lines += [note, ""]
    body = tabulate(_cells(columns, rows), headers=[_header(c) for c in columns], tablefmt="github",
                    disable_numparse=True, colalign=_align(columns, rows))
    return "\n".join(lines + [body]) + "\n"


def _align(columns, rows) -> list[str]:
    """Text columns (labels, certifier names, citations) left, numbers right."""
    return ["left" if all(r[c] is None or isinstance(r[c], str) for r in rows) else "right" for c in columns]


def _tex_escape(s: str) -> str:
    s = s.replace("\\", "\\textbackslash{}")
    for a, b in (("&", "\\&"), ("%", "\\%"), ("_", "\\_"), ("#", "\\#"), ("×", "$\\times$"), ("γ", "$\\gamma$"),
                 ("Δ", "$\\Delta$"), ("ρ", "$\\rho$"), ("–", "--"), ("ℓ", "$\\ell$"), ("≤", "$\\leq$"),
                 ("≥", "$\\geq$"), ("−", "$-$"), ("ε", "$\\varepsilon$"), ("`", "")):
        s = s.replace(a, b)
    return s


def to_latex(name, columns, rows, caption: str = "") -> str:
    """The table as a LaTeX ``table`` environment (tabulate's ``latex_raw`` tabular of cells escaped by
    :func:`_tex_escape`); ``caption`` (:func:`caption`'s text) follows the title."""
    title = TABLES[name][0] + (f". {caption}" if caption else "")
    tabular = tabulate(_cells(columns, rows, _tex_escape), headers=[_tex_escape(_header(c)) for c in columns],
                       tablefmt="latex_raw", disable_numparse=True, colalign=_align(columns, rows))
    out = ["\\begin{table}[t]", "\\centering", f"\\caption{{{_tex_escape(title)}}}", f"\\label{{tab:{name}}}",
           tabular, "\\end{table}"]
    return "\n".join(out) + "\n"


# ------------------------------------------------------------------------------------------------ captions

_CERTIFIER_NAMES = {name: spec.label for name, spec in vocab.CERTIFIERS.items()}
_METHOD_NAMES = {name: spec.label for name, spec in vocab.TRAIN_METHODS.items()}


def _inputs(spec) -> list[str]:
    """Every record path of a table spec's rows, in order of first appearance."""
    seen = []
    for row in spec.get("rows", []):
        for rel in row["inputs"].values():
            if rel not in seen:
                seen.append(rel)
    return seen


def record_counts(spec, root) -> dict:
    """{record path: number of points it holds} for the records of a table spec found under ``root``."""
    out = {}
    for rel in _inputs(spec):
        p = Path(root) / rel
        if p.is_file():
            with open(p, encoding="utf-8") as f:
                out[rel] = sum(1 for line in f if line.strip()) - 1
    return out


def _record_label(rec: dict, aa_version) -> str:
    """What a record is, for a caption: certifier or attack, and its targets (no commas: captions list them)."""
    if rec["kind"] == "curvature":
        return "curvature bounds (Theorem 4)"
    if rec["kind"] == "attack":
        if rec["method"] == "autoattack":
            return f"AutoAttack-l2 ({aa_version})"
        what = {"pgd": "PGD-l2", "second-order": "second-order attack"}.get(rec["method"], rec["method"])
        return f"{what} ({'all classes' if rec['targets'] == 'all' else 'runner-up'})"
    name = _CERTIFIER_NAMES.get(rec["method"], rec["method"])
    return f"{name} ({'all classes' if rec['targets'] == 'all' else 'runner-up'})"


def _protocol_phrase(rec: dict, aa_version) -> str:
    """The protocol of one kind of record: sound, reference or empirical, and against which classes."""
    label = _record_label(rec, aa_version)
    if rec["kind"] == "certify":
        if rec["targets"] == "all":
            return f"{label}: sound, against every wrong class"
        return f"{label}: reference protocol, the runner-up class only (not a certificate of the prediction)"
    if rec["kind"] == "attack":
        if rec["method"] == "autoattack":
            return (f"{label}: every wrong class, in the box [0, 1], successes verified in float64; an empirical "
                    f"upper bound on robust accuracy")
        return f"{label}: an empirical upper bound"
    return f"{label}: exact eigenvalues"


def caption(name: str, spec: dict, plan: dict, counts: dict | None = None) -> dict:
    """The caption of table ``name``, derived from the plan, never written per table: budget and protocol.

    * **budget**: per training method of the table's models (``plan["models"]``), its epochs; the training images
      (the models' ``ntrain``) and the model selection of the config; the test points behind each kind of column (the
      ``n`` of each record path, with the points the records hold when ``counts`` is given: ``all 10000``);
    * **protocol**: per kind of record, sound (all classes), reference (runner-up only) or empirical (attacks);
      CRC's curvature bounds; probabilistic training bounds where a model used one (COAP's random projections);
    * the difference convention, and for timed tables that seconds are the named machine's, beside the paper's GPU.

    Returns:
        ``{"profile", "budget": {"training": [...], "training_images": str, "selection": str, "test_points": {kind
        of record: its test points, " / "-joined where rows differ}}, "protocol": [...], "text": one paragraph}``.
    """
    from ..workflow import parse_record

    cfg = plan["config"]
    data = cfg.get("dataset", "mnist").upper() if cfg.get("dataset", "mnist") == "mnist" else cfg.get("dataset")
    aa_version = spec.get("aa_version", cfg.get("tables", {}).get("headline", {}).get("aa_version", "standard"))
    methods: dict[str, dict] = {}
    for row in spec.get("rows", []):
        k = plan.get("models", {}).get(row["model"])
        if k is None:
            continue
        m = methods.setdefault(k["method"], {"epochs": [], "ntrain": []})
        for f in ("epochs", "ntrain"):
            if k[f] not in m[f]:
                m[f].append(k[f])
    training = [f"{_METHOD_NAMES.get(meth, meth)} {'/'.join(map(str, m['epochs']))} "
                f"epoch{'' if m['epochs'] == [1] else 's'}" for meth, m in methods.items()]
    ntrains = {meth: m["ntrain"] for meth, m in methods.items()}
    common = {tuple(v) for v in ntrains.values()}

    def images(ns):
        return " / ".join(f"all {data}" if n == "all" else f"the first {n} {data}" for n in ns) + " training images"

    if len(common) <= 1:
        train_images = images(next(iter(common), ("all",)))
    else:  # the most common count, and the methods that differ from it
        values = [tuple(v) for v in ntrains.values()]
        usual = max(values, key=values.count)
        others = [f"{_METHOD_NAMES.get(meth, meth)}: {images(ns)}" for meth, ns in ntrains.items()
                  if tuple(ns) != usual]
        train_images = f"{images(usual)} ({'; '.join(others)})"
    sel = {cfg.get("training", {}).get(meth, {}).get("selection", "last") for meth in methods}
    selection = "model selection: " + ", ".join(
        {"last": "last epoch", "best-val": "best held-out epoch", "best-test": "best test epoch (the reference's)"}
        .get(x, x) for x in sorted(sel))
    tests: dict[str, list[str]] = {}  # test points shown → the kinds of record with that many
    per_kind: dict[str, list[str]] = {}  # kind of record → the test points shown for it (several in `protocol`)
    protocol: list[str] = []
    kinds = []
    for rel in _inputs(spec):
        rec = parse_record(rel)
        label = _record_label(rec, aa_version)
        n = rec["n"]
        got = (counts or {}).get(rel)
        shown = f"all {got}" if n == "all" and got is not None else "all" if n == "all" else str(n)
        if label not in tests.setdefault(shown, []):
            tests[shown].append(label)
        if shown not in per_kind.setdefault(label, []):
            per_kind[label].append(shown)
        phrase = _protocol_phrase(rec, aa_version)
        if phrase not in protocol:
            protocol.append(phrase)
        kinds.append(rec)
    if any(r["method"] and r["method"].startswith("crc-") for r in kinds):
        protocol.append("CRC's curvature bounds come from exact symmetric eigenvalues with a rounding margin (the "
                        "reference code used power iteration)")
    if "coap" in methods:
        proj = cfg.get("training", {}).get("coap", {}).get("proj", 50)
        if proj:
            protocol.append(f"COAP was trained with a probabilistic bound ({proj} random projections); its "
                            f"certificates here are the exact, deterministic bound")
    if "published_sound" in spec:
        protocol.append("rows marked \"published, not rerun\" are the cited papers' sound certified accuracies at the "
                        "same radius, not recomputed here")
    if name in LEGENDS:
        protocol.append(LEGENDS[name])
    test_points = {lab: " / ".join(shown) for lab, shown in per_kind.items()}
    text = (f"Profile `{plan.get('profile', cfg.get('name'))}`. Budget: training {', '.join(training)} on "
            f"{train_images}; {selection}. Test points: "
            + "; ".join(f"{shown} for {', '.join(labs)}" for shown, labs in tests.items())
            + ". Protocol: " + "; ".join(protocol) + ". Δ = measured − paper.")
    if int(spec.get("layout", 1)) >= 2 and name in TIMED:
        text += (" Seconds per image were measured on the machine in the `machine` column; the paper's GPU seconds "
                 "stand beside them without a difference (the machines are not comparable).")
    return {"profile": plan.get("profile", cfg.get("name")),
            "budget": {"training": training, "training_images": train_images, "selection": selection,
                       "test_points": test_points},
            "protocol": protocol, "text": text}


def finished_message(results, profile_args: str = "") -> str:
    """What the workflow prints when it has finished (``onsuccess``): Table 1 of the results folder, measured beside
    the paper's numbers, and where the tables, the figures and the report are."""
    results = Path(results)
    md = results / "tables" / "table1.md"
    lines = [md.read_text().rstrip(), ""] if md.is_file() else []
    lines += [f"Tables: {results}/tables/ (CSV, Markdown, LaTeX). Figures: {results}/figures/.",
              f"Report: snakemake {profile_args}--report {results}/report.html (then open it in a browser).",
              f"Audit: sorobust audit {results}"]
    return "\n".join(lines)
