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
* ``empirical_robust_acc``: correct and not broken by ℓ2 PGD within ρ.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

from ..artifacts import read_tsv

PCT = {"std_acc", "certified_acc", "accuracy", "certificate_success", "attack_success", "empirical_robust_acc",
       "certified_runner_up", "certified_all", "certified_ibp", "certified_crown", "improvement"}


def _pct(x: float) -> float:
    return 100.0 * x


def _mean(xs) -> float:
    xs = list(xs)
    return sum(xs) / len(xs) if xs else float("nan")


def _load(root: Path, rel: str) -> list:
    return read_tsv(Path(root) / rel)


def std_acc(rows) -> float:
    return _pct(_mean(r["correct"] for r in rows))


def certified_acc(rows) -> float:
    return _pct(_mean(bool(r["certified"]) for r in rows))


def certified_union(*tables) -> float:
    """Certified by any of several sound certifiers of the same points (a point certified by one is robust)."""
    n = len(tables[0])
    return _pct(_mean(any(bool(t[i]["certified"]) for t in tables) for i in range(n)))


def mean_certificate(rows) -> float:
    return _mean(r["certificate"] for r in rows if r["correct"])


def mean_time(rows) -> float:
    return _mean(r["time_s"] for r in rows)


def exact_fraction(rows) -> float:
    return _pct(_mean(bool(r["exact"]) for r in rows if r["correct"]))


def attack_success(rows) -> float:
    return _pct(_mean(bool(r["success"]) for r in rows if r["correct"]))


def robust_acc(rows) -> float:
    return _pct(_mean(bool(r["robust"]) for r in rows))


# -------------------------------------------------------------------------------------------------- tables


def _table1(row, L):
    ins = row["inputs"]
    if "crc" in ins:
        c = L(ins["crc"])
        return {"certifier": "CRC (all classes)", "std_acc": std_acc(c), "certified_acc": certified_acc(c)}
    if "coap" in ins:
        c = L(ins["coap"])
        return {"certifier": "COAP exact l2 dual", "std_acc": std_acc(c), "certified_acc": certified_acc(c)}
    ibp, crown = L(ins["ibp"]), L(ins["crown"])
    return {"certifier": "IBP or CROWN", "std_acc": std_acc(ibp), "certified_acc": certified_union(ibp, crown),
            "certified_ibp": certified_acc(ibp), "certified_crown": certified_acc(crown)}


def _table2(row, L):
    crc, crown = L(row["inputs"]["crc"]), L(row["inputs"]["crown"])
    return {"std_acc": std_acc(crc), "certified_acc": certified_acc(crc), "crown_mean": mean_certificate(crown),
            "crc_mean": mean_certificate(crc), "t_crown": mean_time(crown), "t_crc": mean_time(crc)}


def _table3(row, L):
    crc, att = L(row["inputs"]["crc"]), L(row["inputs"]["attack"])
    return {"accuracy": std_acc(crc), "certificate_success": exact_fraction(crc),
            "attack_success": attack_success(att)}


def _table4(row, L):
    return {"crc_global": mean_certificate(L(row["inputs"]["crc"])),
            "crc_local": mean_certificate(L(row["inputs"]["crc_local"]))}


def _table5(row, L):
    crc, cc = L(row["inputs"]["crc"]), L(row["inputs"]["cnncert"])
    a, b = mean_certificate(crc), mean_certificate(cc)
    return {"std_acc": std_acc(crc), "certified_acc": certified_acc(crc), "cnncert_mean": b, "crc_mean": a,
            "improvement": _pct((a - b) / b) if b and b == b else float("nan")}


def _iclr3(row, L):
    crc, crown, pgd = L(row["inputs"]["crc"]), L(row["inputs"]["crown"]), L(row["inputs"]["pgd"])
    return {"std_acc": std_acc(crc), "empirical_robust_acc": robust_acc(pgd), "certified_acc": certified_acc(crc),
            "crown_mean": mean_certificate(crown), "crc_mean": mean_certificate(crc)}


def _protocol(row, L):
    ru, al = L(row["inputs"]["runner_up"]), L(row["inputs"]["all"])
    a, b = certified_acc(ru), certified_acc(al)
    return {"std_acc": std_acc(al), "certified_runner_up": a, "certified_all": b, "gap": a - b}


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
}


def load_published(path) -> dict:
    """{(table, depth, activation, training, column): value} from ``config/published.tsv``."""
    out = {}
    for r in read_tsv(path):
        out[(r["table"], str(r["depth"]), r["activation"], str(r["training"]), r["column"])] = float(r["value"])
    return out


def compute(name: str, spec: dict, root, published: dict | None = None) -> tuple[list[str], list[dict]]:
    """Rows of table ``name`` from its plan ``spec`` (records under ``root``): (columns, rows)."""
    _, label_cols, fn = TABLES[name]
    cache = {}

    def L(rel):
        if rel not in cache:
            cache[rel] = _load(root, rel)
        return cache[rel]

    rows, columns = [], list(label_cols)
    for row in spec["rows"]:
        key = row["key"]
        cells = {"network": row["network"], "training": row["training"], "gamma": row["training"]}
        measured = fn(row, L)
        for col, v in measured.items():
            if col not in columns:
                columns.append(col)
            cells[col] = v
            if isinstance(v, str):
                continue
            pk = (name, str(key["depth"]), key["activation"], str(key["training"]), col)
            if published is not None and pk in published:
                for extra in (f"paper_{col}", f"diff_{col}"):
                    if extra not in columns:
                        columns.append(extra)
                cells[f"paper_{col}"] = published[pk]
                cells[f"diff_{col}"] = v - published[pk]
        rows.append(cells)
    for r in rows:
        for c in columns:
            r.setdefault(c, None)
    # keep each measured column next to its paper value and difference
    ordered = list(label_cols)
    for c in columns:
        if c in ordered or c.startswith(("paper_", "diff_")):
            continue
        ordered.append(c)
        ordered += [x for x in (f"paper_{c}", f"diff_{c}") if x in columns]
    return ordered, rows


def fmt(v, digits: int = 6) -> str:
    if v is None:
        return ""
    if isinstance(v, str):
        return v
    if isinstance(v, float) and math.isnan(v):
        return "nan"
    return f"{v:.{digits}g}"


def to_csv(columns, rows) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(columns)
    for r in rows:
        w.writerow([fmt(r[c]) for c in columns])
    return buf.getvalue()


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
    if col.startswith("diff_"):
        return f"{v:+.2f}" if _is_pct(col) else f"{v:+.4f}"
    return f"{v:.2f}" if _is_pct(col) else f"{v:.4f}"


def _is_pct(col: str) -> bool:
    return col.removeprefix("paper_").removeprefix("diff_") in PCT


def _header(col: str) -> str:
    unit = " (%)" if _is_pct(col) else ""
    if col.startswith("paper_"):
        return f"paper {col[6:]}{unit}"
    if col.startswith("diff_"):
        return f"Δ {col[5:]}"
    return f"{col}{unit}"


def to_markdown(name, columns, rows, note: str = "") -> str:
    title = TABLES[name][0]
    lines = [f"### {title}", ""]
    if note:
        lines += [note, ""]
    lines.append("| " + " | ".join(_header(c) for c in columns) + " |")
    lines.append("|" + "|".join("---" for _ in columns) + "|")
    for r in rows:
        lines.append("| " + " | ".join(_short(r[c], c) for c in columns) + " |")
    return "\n".join(lines) + "\n"


def _tex_escape(s: str) -> str:
    s = s.replace("\\", "\\textbackslash{}")
    for a, b in (("&", "\\&"), ("%", "\\%"), ("_", "\\_"), ("#", "\\#"), ("×", "$\\times$"), ("γ", "$\\gamma$"),
                 ("Δ", "$\\Delta$"), ("ρ", "$\\rho$"), ("–", "--")):
        s = s.replace(a, b)
    return s


def to_latex(name, columns, rows) -> str:
    title = TABLES[name][0]
    out = ["\\begin{table}[t]", "\\centering", f"\\caption{{{_tex_escape(title)}}}", f"\\label{{tab:{name}}}",
           "\\begin{tabular}{" + "l" * len(TABLES[name][1]) + "r" * (len(columns) - len(TABLES[name][1])) + "}",
           "\\toprule", " & ".join(_tex_escape(_header(c)) for c in columns) + " \\\\", "\\midrule"]
    for r in rows:
        out.append(" & ".join(_tex_escape(_short(r[c], c)) for c in columns) + " \\\\")
    out += ["\\bottomrule", "\\end{tabular}", "\\end{table}"]
    return "\n".join(out) + "\n"
