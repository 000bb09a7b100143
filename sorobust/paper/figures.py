"""The paper's figures, drawn from per-point records (PNG and PDF, deterministic metadata).

* ``curvature`` (ICLR Fig. 1 / ICML slide "Empirical results with curvature regularization"): K_ub (Theorem 4's
  bound K(W, y, t), averaged over the (y, t) pairs of the evaluated points) and K_lb (the largest ‖∇²ₓ(z_y − z_t)‖₂
  met at those points, averaged over the same pairs; a lower bound of the true global curvature) against γ,
  log-scale y, for CRT and PGD networks.
* ``certified_vs_radius``: certified accuracy against ℓ2 radius ρ, from each model's per-point certificates
  (CRC certificate or the baselines' certified radius; for CROWN-IBP the larger of IBP's and CROWN's radii), for
  every model of Table 1. A point counts at ρ iff it is correctly classified, its certificate exceeds ρ and the
  solver converged.

  Layout: one panel per depth (and one for the conv net when the plan has one). Every series has a unique
  (colour, line style, marker) tuple:

  - **colour = method** (training and activation, e.g. "CRT (softplus)"), the same in every panel, from the
    Okabe–Ito colour-blind-safe palette (:data:`PALETTE`);
  - **line style = family** (:data:`FAMILIES`): solid for sound deterministic certificates against all wrong
    classes (CRC all-class, IBP/CROWN, COAP, CNN-Cert), dashed for the reference code's protocol (runner-up class
    only; labelled as such, it is not a sound multi-class certificate), dotted for probabilistic certificates
    (randomized smoothing; labelled "probabilistic");
  - **marker = certifier** (:data:`CERTIFIER_MARKERS`).

  The paper's Table 1 values (``config/published.tsv``, column ``certified_acc``) are drawn as stars in the
  method's colour at ρ = 1.58 (legend entry "paper"), a vertical line marks ρ = 1.58, and the caption states the
  budget (epochs, training images, test points, all read from the record paths) and the protocols drawn.

  The series' method, family, certifier and budget are read from the record paths of the plan's path grammar
  (``certify/{arch}/{method}-g{γ}-r{ρ}-e{epochs}-n{ntrain}-s{seed}/{certifier}-{targets}-n{ntest}.tsv``);
  a series may also set ``method``, ``family``, ``certifier``, ``panel`` or ``training`` in its spec, which win.

:func:`build_figure` returns the matplotlib Figure (so its artists can be inspected); :func:`draw` saves it.
Every data line carries a ``gid`` (``series|…``, ``paper|…``, ``rho``) naming what it shows.
"""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

from ..artifacts import read_tsv
from ..errors import SorobustError

#: the radius of the paper's Table 1 (√(784/π)·0.1, the ℓ2 ball of the ℓ∞ ball of radius 0.1's volume)
PAPER_RHO = 1.58
#: Okabe & Ito's colour-blind-safe palette, in the order methods receive it (yellow, weak on white, last)
PALETTE = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000", "#F0E442")
#: family → (line style, legend/caption text)
FAMILIES = {
    "sound": ("-", "sound, all wrong classes"),
    "reference": ("--", "reference protocol: runner-up class only, not sound"),
    "probabilistic": (":", "probabilistic"),
}
#: certifier names whose certificates are probabilistic (randomized smoothing)
PROBABILISTIC_CERTIFIERS = ("smoothing", "randomized-smoothing", "rs", "cohen")
#: certifier → marker (``*`` is kept for the paper's points)
CERTIFIER_MARKERS = {"crc-global": "o", "crc-local": "h", "crown+ibp": "s", "crown": "D", "ibp": "v",
                     "coap": "^", "cnn-cert": "P", "crown-ibp": "s", "smoothing": "X", "randomized-smoothing": "X",
                     "rs": "X", "cohen": "X"}
#: Table 1's methods: (training, activation) → colour, the same whatever else a figure shows
_FIXED_COLOURS = {("crt", "softplus"): PALETTE[0], ("crown-ibp", "softplus"): PALETTE[1],
                  ("crown-ibp", "relu"): PALETTE[2], ("coap", "relu"): PALETTE[3]}
_SPARE_MARKERS = ("<", ">", "p", "d", "8", "H", "1", "2", "3", "4")
_CERTIFIER_TEXT = {"smoothing": "randomized smoothing", "randomized-smoothing": "randomized smoothing",
                   "rs": "randomized smoothing", "cohen": "randomized smoothing",
                   "crc-global": "CRC", "crc-local": "CRC, local curvature", "crown+ibp": "max(IBP, CROWN)",
                   "crown": "CROWN", "ibp": "IBP", "coap": "COAP dual bound", "cnn-cert": "CNN-Cert",
                   "crown-ibp": "CROWN-IBP"}
_TRAINING_NAMES = {"crt": "CRT", "crown-ibp": "CROWN-IBP", "coap": "COAP", "standard": "standard",
                   "gamma": "γ-reg.", "pgd": "PGD", "trades": "TRADES"}
_TRAINING_ORDER = ("crt", "gamma", "standard", "crown-ibp", "coap", "pgd", "trades")
_ACTIVATION_ORDER = ("softplus", "sigmoid", "tanh", "relu")
_RECORD = re.compile(r"(?:^|/)certify/(?P<arch>[^/]+)/(?P<method>.+?)-g(?P<gamma>.+?)-r(?P<rho>.+?)-e(?P<epochs>\d+)"
                     r"-n(?P<ntrain>[^-/]+)-s(?P<seed>\d+)/(?P<certifier>.+?)-(?P<targets>all|runner-up|random)"
                     r"(?:-r(?P<crho>[^-/]+?))?-n(?P<ntest>[^-/]+)\.tsv$")  # -r{ρ}: records before issue 12
_MLP = re.compile(r"^mlp-(?P<depth>\d+)x(?P<width>\d+)-(?P<act>\w+)$")
_CNN = re.compile(r"^cnn-(?P<ch>\d+)c(?P<k>\d+)k(?P<s>\d+)s-(?P<act>\w+)$")


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


# ------------------------------------------------------------------------------------------ certified_vs_radius


def _num(x) -> str:
    """``%g`` of a number given as text or number (the plan's path grammar); text that is no number as is."""
    try:
        return f"{float(x):g}"
    except (TypeError, ValueError):
        return str(x)


def default_published() -> Path | None:
    """``config/published.tsv``: under the working directory (the workflow's), else beside the package's
    checkout; ``None`` when neither exists (the figure is then drawn without the paper's points)."""
    for base in (Path.cwd(), Path(__file__).resolve().parents[2]):
        p = base / "config" / "published.tsv"
        if p.is_file():
            return p
    return None


def load_paper_points(published=None, dataset: str = "mnist") -> dict:
    """{(depth, activation, training): certified accuracy (%)} of the paper's Table 1 on ``dataset`` from
    ``published`` (a path to ``config/published.tsv``, a dict already keyed so, or ``None`` for
    :func:`default_published`); empty for a dataset the paper has no numbers of."""
    from .tables import published_dataset

    if isinstance(published, dict):
        return dict(published)
    path = Path(published) if published is not None else default_published()
    if path is None:
        return {}
    return {(int(r["depth"]), str(r["activation"]), str(r["training"])): float(r["value"])
            for r in read_tsv(path) if r["table"] == "table1" and r["column"] == "certified_acc"
            and published_dataset(r) == dataset}


def describe_series(s: dict) -> dict:
    """What a ``certified_vs_radius`` series shows, read from its record paths (spec keys win).

    Returns a dict with ``panel`` (``"2"``… for an MLP of that depth, ``"conv"``), ``panel_order``,
    ``network``, ``training`` (method name: CRT, CROWN-IBP, …), ``activation``, ``gamma``, ``table1_training``
    (the Table 1 row name, e.g. "CRT, 0.01"), ``certifier`` (records' certifiers joined by ``+``, sorted),
    ``family``, ``epochs``, ``n_train``, ``n_test`` and ``rho`` (the certification radius in the path of records
    written before issue 12; ``None`` for records that hold radii, or where a path does not follow the
    grammar)."""
    parsed = [m.groupdict() for m in (_RECORD.search(str(f)) for f in s["records"]) if m]
    first = parsed[0] if parsed and len(parsed) == len(s["records"]) else None
    d = {"panel": str(s.get("depth", "?")), "network": f"depth {s.get('depth', '?')}",
         "training": s.get("label", "?"), "method_key": None, "activation": None, "gamma": None,
         "table1_training": None, "certifier": "+".join(sorted(Path(str(f)).stem for f in s["records"])),
         "family": "sound", "epochs": None, "n_train": None, "n_test": None, "rho": None, "depth": s.get("depth")}
    if first is not None:
        arch, mlp, cnn = first["arch"], _MLP.match(first["arch"]), _CNN.match(first["arch"])
        if mlp:
            d.update(panel=mlp["depth"], depth=int(mlp["depth"]),
                     network=f"{mlp['depth']}×[{mlp['width']}]", activation=mlp["act"])
        elif cnn:
            d.update(panel="conv", depth=None, activation=cnn["act"],
                     network=f"conv net ({cnn['ch']} ch., {cnn['k']}×{cnn['k']}, stride {cnn['s']})")
        else:
            d.update(network=arch)
        method = first["method"]
        d.update(method_key=method, training=_TRAINING_NAMES.get(method, method), gamma=float(first["gamma"]),
                 epochs=int(first["epochs"]), n_train=first["ntrain"], n_test=first["ntest"],
                 rho=float(first["crho"]) if first["crho"] else None,
                 certifier="+".join(sorted({p["certifier"] for p in parsed})))
        d["table1_training"] = f"CRT, {_num(first['gamma'])}" if method == "crt" else d["training"]
        targets = {p["targets"] for p in parsed}
        if any(c in PROBABILISTIC_CERTIFIERS for c in (p["certifier"] for p in parsed)):
            d["family"] = "probabilistic"
        elif "runner-up" in targets:
            d["family"] = "reference"
    for k in ("training", "family", "certifier", "panel", "activation"):
        if k in s:
            d[k] = str(s[k])
    d["panel_order"] = (1, 0) if d["panel"] == "conv" else (0, int(d["panel"]) if d["panel"].isdigit() else 0)
    if d["family"] not in FAMILIES:
        raise SorobustError(f"series '{s.get('label')}': family '{d['family']}' is not one of {', '.join(FAMILIES)}")
    d["method"] = str(s["method"]) if "method" in s else _plain_method(d)
    return d


def _certify_curve(s: dict, root, radii) -> list[float]:
    """Certified accuracy (%) of one series at each radius: per point, the largest certificate over its records
    (0 unless correct and converged), counted at r iff the point is correct and that certificate exceeds r."""
    from ..summaries import certified_at

    tabs = [read_tsv(Path(root) / f) for f in s["records"]]
    n = len(tabs[0])
    best = [max((t[i]["certificate"] or 0.0) if t[i]["correct"] and (t[i].get("converged") in (None, 1, True))
                else 0.0 for t in tabs) for i in range(n)]
    correct = [bool(tabs[0][i]["correct"]) for i in range(n)]
    return [100.0 * sum(bool(certified_at(c, b, None, r)) for c, b in zip(correct, best)) / max(n, 1)
            for r in radii]


def _plain_method(d: dict) -> str:
    """The method name a series gets from its training and activation alone (no γ, no spec override)."""
    return f"{d['training']} ({d['activation']})" if d["activation"] else d["training"]


def _method_order(d: dict) -> tuple:
    """Canonical order of methods (CRT first, then the baselines; softplus before relu), for colours/legends."""
    t = d.get("method_key")
    a = d.get("activation")
    return (_TRAINING_ORDER.index(t) if t in _TRAINING_ORDER else len(_TRAINING_ORDER), t or "",
            _ACTIVATION_ORDER.index(a) if a in _ACTIVATION_ORDER else len(_ACTIVATION_ORDER), a or "",
            d["method"])


def certified_curves(spec: dict, root, published=None, dataset: str = "mnist") -> list[dict]:
    """Certified accuracy (%) at each radius of ``spec["radii"]`` for every series, with what it shows.

    Each entry: ``label`` (the spec's), ``radii``, ``certified_acc`` (one value per radius), the fields of
    :func:`describe_series`, ``paper`` (the paper's Table 1 certified accuracy of this model at ρ = 1.58 from
    ``published``, see :func:`load_paper_points`; ``None`` where it published none, the certification radius is
    not 1.58, or the series is probabilistic) and ``id`` (``panel|method|family|certifier``).

    Methods whose γ differs within one panel (several CRT γ of one depth) get γ in their method name, so that
    they receive distinct colours."""
    radii = list(spec["radii"])
    paper = load_paper_points(published, dataset)
    out = []
    for s in spec["series"]:
        d = describe_series(s)
        d.update(label=s["label"], radii=radii, certified_acc=_certify_curve(s, root, radii))
        out.append(d)
    gammas: dict = {}
    for s, d in zip(spec["series"], out):
        if "method" not in s and d["gamma"]:
            gammas.setdefault((d["panel"], d["method"]), set()).add(d["gamma"])
    split = {m for (_, m), gs in gammas.items() if len(gs) > 1}
    for s, d in zip(spec["series"], out):
        if d["method"] in split:
            d["method"] = f"{d['training']} γ={_num(d['gamma'])} ({d['activation']})"
        key = (d["depth"], d["activation"], d["table1_training"])
        d["paper"] = (paper.get(key) if d["rho"] in (None, PAPER_RHO) and d["family"] != "probabilistic"
                      and d["depth"] is not None else None)
        d["id"] = f"{d['panel']}|{d['method']}|{d['family']}|{d['certifier']}"
        d["panel_order"] = list(d["panel_order"])
    return out


def series_styles(data: list[dict]) -> dict:
    """{series id: (colour, line style, marker)}: colour per method (Okabe–Ito, in canonical method order,
    the same in every panel), line style per family, marker per certifier.

    Raises:
        SorobustError: More methods than the palette has colours, or two series of one panel with one style
            (same method, family and certifier).
    """
    methods = []
    for d in sorted(data, key=_method_order):
        if d["method"] not in methods:
            methods.append(d["method"])
    if len(methods) > len(PALETTE):
        raise SorobustError(f"certified_vs_radius: {len(methods)} methods but {len(PALETTE)} colour-blind-safe "
                            "colours; split the figure")
    colour, free = {}, list(PALETTE)
    for d in sorted(data, key=_method_order):  # Table 1's methods keep their colour in every profile
        c = _FIXED_COLOURS.get((d["method_key"], d["activation"]))
        if d["method"] not in colour and c in free and d["method"] == _plain_method(d):
            colour[d["method"]] = c
            free.remove(c)
    for m in methods:
        if m not in colour:
            colour[m] = free.pop(0)
    spare = iter(_SPARE_MARKERS)
    markers = dict(CERTIFIER_MARKERS)
    for c in sorted({d["certifier"] for d in data}):
        if c not in markers:
            markers[c] = next(spare, ".")
    styles, used = {}, {}
    for d in data:
        st = (colour[d["method"]], FAMILIES[d["family"]][0], markers[d["certifier"]])
        other = used.get((d["panel"], st))
        if other is not None:
            raise SorobustError(f"certified_vs_radius: series '{d['label']}' and '{other}' would share the style "
                                f"{st} in panel {d['panel']}")
        used[(d["panel"], st)] = d["label"]
        styles[d["id"]] = st
    return styles


def _legend_text(d: dict) -> str:
    """Legend text of a series: method, certifier and, for the non-sound families, the protocol."""
    cert = "+".join(_CERTIFIER_TEXT.get(c, c) for c in d["certifier"].split("+"))
    if d["certifier"] == "crown+ibp":
        cert = _CERTIFIER_TEXT["crown+ibp"]
    if d["family"] == "sound":
        return f"{d['method']}: {cert}, all classes"
    if d["family"] == "reference":
        return f"{d['method']}: {cert}, runner-up only (reference protocol)"
    return f"{d['method']}: {cert} (probabilistic)"


def _budget_text(data: list[dict]) -> str:
    """Caption line with the budget read from the record paths: epochs and training images per training
    method, and test points; empty when the paths do not say."""
    per: dict = {}
    for d in sorted(data, key=_method_order):
        if d["epochs"] is None:
            continue
        per.setdefault(d["training"], [])
        item = (d["epochs"], d["n_train"])
        if item not in per[d["training"]]:
            per[d["training"]].append(item)
    if not per:
        return ""
    parts = [f"{t} " + ", ".join(f"{e} / {n}" for e, n in v) for t, v in per.items()]
    tests = []
    for d in data:
        if d["n_test"] is not None and d["n_test"] not in tests:
            tests.append(d["n_test"])
    return (f"Budget (epochs / training images): {'; '.join(parts)}. "
            f"Test points per curve: {', '.join(tests)}.")


def _protocol_text(data: list[dict]) -> str:
    """Caption line naming the protocol of each line style present."""
    names = {"sound": "solid = sound certificate against all wrong classes",
             "reference": "dashed = reference protocol (runner-up class only; not a sound certificate)",
             "probabilistic": "dotted = probabilistic (randomized smoothing)"}
    present = [f for f in FAMILIES if any(d["family"] == f for d in data)]
    return ("Protocol: " + "; ".join(names[f] for f in present) + ". Counted at ρ iff correct, converged and "
            "certificate > ρ.")


def _dodge(values: list[float], close: float = 4.0, step: float = 7.0) -> list[float]:
    """Sideways offsets (points) that keep markers at nearly equal heights apart: values within ``close`` of
    their neighbour (sorted) form a group, spread ``step`` points apart around the true x; others stay put."""
    order = sorted(range(len(values)), key=lambda i: (values[i], i))
    groups: list[list[int]] = []
    for i in order:
        if groups and values[i] - values[groups[-1][-1]] < close:
            groups[-1].append(i)
        else:
            groups.append([i])
    out = [0.0] * len(values)
    for g in groups:
        for j, i in enumerate(g):
            out[i] = (j - (len(g) - 1) / 2) * step
    return out


def _draw_certified(data: list[dict], title: str):
    """The ``certified_vs_radius`` Figure: one panel per depth (conv net last), one shared legend below."""
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.transforms import ScaledTranslation

    styles = series_styles(data)
    panels = []
    for d in sorted(data, key=lambda d: tuple(d["panel_order"])):
        if d["panel"] not in panels:
            panels.append(d["panel"])
    n = max(len(panels), 1)
    fig, axes = plt.subplots(1, n, figsize=(max(6.0, 3.9 * n), 5.6 if n > 1 else 6.4), sharey=True, squeeze=False,
                             layout="constrained")
    axes = axes[0]
    xmax = max([max(d["radii"]) for d in data if d["radii"]] + [PAPER_RHO])
    for ax, panel in zip(axes, panels):
        ds = sorted((d for d in data if d["panel"] == panel), key=lambda d: (_method_order(d), d["family"]))
        ax.axvline(PAPER_RHO, color="0.45", lw=0.9, ls="-.", zorder=0, gid="rho", label="_rho")
        for d in ds:
            c, ls, mk = styles[d["id"]]
            ax.plot(d["radii"], d["certified_acc"], color=c, ls=ls, marker=mk, ms=4, lw=1.6,
                    label=_legend_text(d), gid=f"series|{d['id']}")
        stars, done = [], []
        for d in ds:
            if d["paper"] is not None and d["method"] not in done:
                done.append(d["method"])
                stars.append(d)
        for d, dx in zip(stars, _dodge([d["paper"] for d in stars])):
            shift = ax.transData + ScaledTranslation(dx / 72, 0, fig.dpi_scale_trans)
            ax.plot([PAPER_RHO], [d["paper"]], ls="none", marker="*", ms=11, color=styles[d["id"]][0],
                    markeredgecolor="black", markeredgewidth=0.6, zorder=5, label=f"_paper {d['method']}",
                    gid=f"paper|{d['panel']}|{d['method']}", transform=shift)
        notes = []
        for d in ds:
            if d["gamma"] and d["method_key"] in ("crt", "gamma"):
                g = f"{d['training']} γ = {_num(d['gamma'])}"
                if g not in notes:
                    notes.append(g)
        ax.set_title(ds[0]["network"] + (f"  ({', '.join(notes)})" if notes else ""), fontsize=9.5)
        ax.set_xlabel("ℓ2 radius ρ", fontsize=9)
        ax.set_xlim(-0.05, xmax + 0.05)
        ax.set_ylim(-2, 102)
        ax.grid(True, color="0.9", lw=0.6)
        ax.tick_params(labelsize=8)
        ax.set_gid(f"panel|{panel}")
    axes[0].set_ylabel("certified accuracy (%)", fontsize=9)
    handles, seen = [], []
    for d in sorted(data, key=lambda d: (_method_order(d), list(FAMILIES).index(d["family"]), d["certifier"])):
        c, ls, mk = styles[d["id"]]
        text = _legend_text(d)
        if text in seen:
            continue
        seen.append(text)
        handles.append(Line2D([], [], color=c, ls=ls, marker=mk, ms=4, lw=1.6, label=text))
    if any(d["paper"] is not None for d in data):
        handles.append(Line2D([], [], ls="none", marker="*", ms=11, color="0.6", markeredgecolor="black",
                              markeredgewidth=0.7, label="paper: ICML Table 1 at ρ = 1.58, in the method's colour"))
    handles.append(Line2D([], [], color="0.45", lw=0.9, ls="-.", label="ρ = 1.58 (Table 1's radius)"))
    fig.legend(handles=handles, loc="outside lower center", ncol=2 if n > 1 else 1, fontsize=7.5, frameon=False)
    lines = ["Certified accuracy against ℓ2 radius ρ on MNIST" + (f" ({title})" if title else ""),
             _budget_text(data), _protocol_text(data)]
    if any(d["paper"] is not None for d in data):
        lines.append("Stars: the paper's Table 1 values at ρ = 1.58 (the paper's budget and protocol), spread "
                     "sideways where they would overlap.")
    width = int(fig.get_figwidth() * 15)
    fig.suptitle("\n".join(w for t in lines if t for w in textwrap.wrap(t, width)), fontsize=8.5)
    return fig


def _draw_curvature(data: list[dict], title: str):
    """The ``curvature`` Figure: K_ub and K_lb against γ (symlog x, log y) for CRT and PGD networks."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4))
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
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=6)
    fig.tight_layout()
    return fig


def build_figure(name: str, data: list[dict], title: str = ""):
    """The matplotlib Figure of figure ``name`` from its computed ``data`` (Agg backend; not saved). The caller
    closes it (``matplotlib.pyplot.close``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams["svg.hashsalt"] = "sorobust"
    return FIGURES[name][1](data, title)


def _save(fig, prefix: Path) -> list[Path]:
    """Write ``fig`` as PREFIX.png (150 dpi) and PREFIX.pdf, atomically and without time or version metadata."""
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
    import matplotlib.pyplot as plt

    fig = build_figure(name, data, title)
    prefix = Path(prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    try:
        return _save(fig, prefix)
    finally:
        plt.close(fig)


def compute(name: str, spec: dict, root, published=None, dataset: str = "mnist") -> list[dict]:
    """The data of figure ``name`` from its plan ``spec`` and the records under ``root`` (``published``: the
    paper's numbers for ``certified_vs_radius``, see :func:`load_paper_points`)."""
    if name == "curvature":
        return FIGURES[name][0](spec, root)
    return FIGURES[name][0](spec, root, published, dataset)


#: the figures (one per :class:`sorobust.vocab.Figure`): how each computes its data from its plan spec and the
#: records, and how it draws them
FIGURES = {"curvature": (curvature_points, _draw_curvature), "certified_vs_radius": (certified_curves, _draw_certified)}
