"""Summary statistics of per-point records: the numbers in the ``.json`` beside every certify, attack and curvature
``.tsv``.

One definition, used where a summary is written (``sorobust certify``/``attack``/``curvature``) and where it is
checked (``sorobust audit`` recomputes every summary from its TSV, so a summary edited by hand, or computed by other
code than its records', is a discrepancy). Rows are dicts as :func:`sorobust.artifacts.read_tsv` returns them (flags
as ``0``/``1`` or bools); every function is pure.
"""

from __future__ import annotations


def certified_at(correct, certificate, converged, rho):
    """The one rule of certification at radius ρ: a point is certified iff it is correctly classified, its
    certificate (a sound lower bound on the ℓ2 distance to every other class, or the runner-up only under the
    reference protocol) exceeds ρ, and its solver converged (``None``: a certifier without iterations). Works on
    Python values and elementwise on tensors; used by the certifiers' records, the figures and the tables."""
    if converged is None:
        converged = True
    return correct & (certificate > rho) & converged


def common(rows, time_s, rho=None) -> dict:
    """Fields of every certify and attack summary: point count, clean accuracy and speed; an attack's radius.

    Args:
        rows: Per-point records (``correct`` column).
        time_s: The run's wall time in seconds (not in the rows); ``points_per_s`` is ``None`` unless it is > 0.
        rho: An attack's radius (not in the rows; recorded as given). Certificates hold radii for every ρ, so a
            certify summary has none here (:func:`certified` reports the ρ asked for).
    """
    n = len(rows)
    out = {"n_points": n, "accuracy": sum(r["correct"] for r in rows) / max(n, 1), "time_s": time_s,
           "points_per_s": n / time_s if time_s is not None and time_s > 0 else None}
    if rho is not None:
        out["rho"] = rho
    return out


def radii(rho) -> list:
    """The radii a certify summary reports: ``None`` (none), one number or a list of numbers."""
    if rho is None:
        return []
    return [float(r) for r in (rho if isinstance(rho, (list, tuple)) else [rho])]


def rho_key(rho: float) -> str:
    """A radius as a summary's key (``0.5``, ``1.58``, ``2``)."""
    return f"{float(rho):g}"


def row_certified(r: dict, rho: float) -> bool:
    """One per-point certify record certified at ``rho`` (:func:`certified_at` on its columns; a record without a
    ``converged`` value is a certifier without iterations)."""
    conv = r.get("converged")
    return bool(certified_at(bool(r["correct"]), float(r["certificate"]), None if conv is None else bool(conv), rho))


def certified(rows, rho=None) -> dict:
    """Mean certificate over the correctly classified points, and the certified accuracy (over all points) at each
    radius of ``rho`` (:func:`radii`), keyed by :func:`rho_key`. Records hold radii; ρ belongs to aggregation."""
    correct = [r for r in rows if r["correct"]]
    return {"certified_accuracy_at": {rho_key(x): sum(row_certified(r, x) for r in rows) / max(len(rows), 1)
                                      for x in radii(rho)},
            "mean_certificate_correct": sum(r["certificate"] for r in correct) / max(len(correct), 1)}


def crc(rows) -> dict:
    """CRC only: fractions of the correctly classified points whose dual solution is exact (primal = dual) and
    whose solver converged."""
    n_correct = max(sum(1 for r in rows if r["correct"]), 1)
    return {"exact_fraction": sum(r["exact"] for r in rows if r["correct"]) / n_correct,
            "converged_fraction": sum(r["converged"] for r in rows if r["correct"]) / n_correct}


def attack(rows) -> dict:
    """Attack success over the correctly classified points, empirical robust accuracy (ours and the reference
    code's rule) over all points."""
    n = max(len(rows), 1)
    return {"attack_success": sum(r["success"] for r in rows if r["correct"]) / max(sum(r["correct"] for r in rows),
                                                                                    1),
            "empirical_robust_accuracy": sum(r["robust"] for r in rows) / n,
            "empirical_robust_accuracy_reference": sum(r["robust_reference"] for r in rows) / n}


def curvature(rows) -> dict:
    """Points (distinct ``idx``; each has one row per wrong class), mean curvature bound ``K_ub`` over the rows,
    largest Hessian norm."""
    return {"n_points": len({r["idx"] for r in rows}),
            "K_ub_mean": sum(r["K_ub"] for r in rows) / max(len(rows), 1),
            "hessian_norm_max": max((r["hessian_norm"] for r in rows), default=0.0)}


def of_records(kind: str, rows, rho=None, time_s=None, method=None) -> dict:
    """Every field of a ``kind`` summary that follows from its rows and the run's radius, wall time and method.

    Args:
        kind: ``certify``, ``attack`` or ``curvature`` (the results folder's top-level directory of the record).
        rows: The record's per-point rows.
        rho, time_s: The run's radius (an attack's; the radii a certify summary reports) and wall time (the
            provenance record's ``config.rho`` and ``timings.total_s``).
        method: The certify method (``crc`` adds :func:`crc`'s fields).

    Returns:
        ``{field: value}``; a summary written by the CLI from these rows has exactly these values.
    """
    if kind == "curvature":
        return {**curvature(rows), "time_s": time_s}
    if kind == "certify":
        out = common(rows, time_s)
        out.update(certified(rows, rho))
        if method == "crc":
            out.update(crc(rows))
    elif kind == "attack":
        out = common(rows, time_s, rho)
        out.update(attack(rows))
    else:
        raise ValueError(f"unknown record kind {kind!r}; expected certify, attack or curvature")
    return out
