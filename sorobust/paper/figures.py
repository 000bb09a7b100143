"""The paper's figures, drawn from per-point records (PNG and PDF, deterministic metadata).

* ``curvature`` (ICLR Fig. 1 / ICML slide "Empirical results with curvature regularization"): K_ub (Theorem 4's
  bound K(W, y, t), averaged over the (y, t) pairs of the evaluated points) and K_lb (the largest ‖∇²ₓ(z_y − z_t)‖₂
  met at those points, averaged over the same pairs; a lower bound of the true global curvature) against γ,
  log-scale y, for CRT and PGD networks.
* ``certified_vs_radius``: certified accuracy against ℓ2 radius r, from each model's per-point certificates
  (CRC certificate or the baselines' certified radius; for CROWN-IBP the larger of IBP's and CROWN's radii), for
  every model of Table 1.
"""

from __future__ import annotations

from pathlib import Path

from ..artifacts import read_tsv


def curvature_points(spec: dict, root) -> list[dict]:
    """One point per (method, γ): mean K_ub and mean K_lb over the (y, t) pairs of the curvature records."""
    out = []
    for p in spec["points"]:
        rows = read_tsv(Path(root) / p["curvature"])
        pairs: dict = {}
        for r in rows:
            k = (r["label"], r["target"])
            ub, lb = pairs.get(k, (r["K_ub"], 0.0))
            pairs[k] = (ub, max(lb, r["hessian_norm"]))
        n = max(len(pairs), 1)
        out.append({"method": p["method"], "gamma": p["gamma"], "K_ub": sum(v[0] for v in pairs.values()) / n,
                    "K_lb": sum(v[1] for v in pairs.values()) / n, "pairs": len(pairs)})
    return out


def certified_curves(spec: dict, root) -> list[dict]:
    """Certified accuracy (%) at each radius of ``spec["radii"]`` for every series."""
    out = []
    for s in spec["series"]:
        tabs = [read_tsv(Path(root) / f) for f in s["records"]]
        n = len(tabs[0])
        best = [max((t[i]["certificate"] or 0.0) if t[i]["correct"] and (t[i].get("converged") in (None, 1, True))
                    else 0.0 for t in tabs) for i in range(n)]
        correct = [bool(tabs[0][i]["correct"]) for i in range(n)]
        acc = [100.0 * sum(c and b > r for c, b in zip(correct, best)) / max(n, 1) for r in spec["radii"]]
        out.append({"label": s["label"], "radii": list(spec["radii"]), "certified_acc": acc})
    return out


def _save(fig, prefix: Path) -> list[Path]:
    from ..artifacts import atomic_write

    paths = [prefix.with_suffix(".png"), prefix.with_suffix(".pdf")]
    with atomic_write(paths[0], "wb") as f:
        fig.savefig(f, format="png", dpi=150, metadata={"Software": None})
    with atomic_write(paths[1], "wb") as f:
        fig.savefig(f, format="pdf", metadata={"CreationDate": None, "ModDate": None, "Producer": None,
                                               "Creator": None})
    return paths


def draw(name: str, data: list[dict], prefix: Path, title: str = "") -> list[Path]:
    """Draw figure ``name`` from its computed ``data``; writes PREFIX.png and PREFIX.pdf."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams["svg.hashsalt"] = "sorobust"
    fig, ax = plt.subplots(figsize=(5.5, 4))
    if name == "curvature":
        for method, style in (("CRT", "-"), ("PGD", "--")):
            pts = sorted((d for d in data if d["method"] == method), key=lambda d: d["gamma"])
            if not pts:
                continue
            g = [d["gamma"] for d in pts]
            ax.plot(g, [d["K_ub"] for d in pts], style, marker="o", label=f"{method} K_ub")
            ax.plot(g, [d["K_lb"] for d in pts], style, marker="x", label=f"{method} K_lb")
        ax.set_yscale("log")
        ax.set_xscale("symlog", linthresh=min([d["gamma"] for d in data if d["gamma"] > 0] or [1e-3]))
        ax.set_xlabel("γ (curvature regularisation)")
        ax.set_ylabel("curvature bound (log scale)")
    else:
        for s in data:
            ax.plot(s["radii"], s["certified_acc"], label=s["label"])
        ax.set_xlabel("ℓ2 radius")
        ax.set_ylabel("certified accuracy (%)")
        ax.axvline(1.58, color="grey", lw=0.5, ls=":")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=6)
    fig.tight_layout()
    prefix.parent.mkdir(parents=True, exist_ok=True)
    paths = _save(fig, prefix)
    plt.close(fig)
    return paths


def compute(name: str, spec: dict, root) -> list[dict]:
    return curvature_points(spec, root) if name == "curvature" else certified_curves(spec, root)
