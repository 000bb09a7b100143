"""``certified_vs_radius``: panels, styles, the paper's points and the curves, checked on the matplotlib artists
of a figure drawn from synthetic per-point records (the plan's path grammar), against values recomputed here by
hand and the published numbers read here from ``config/published.tsv``."""

import csv
import inspect
import random
from pathlib import Path

import matplotlib
import pytest

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from sorobust.artifacts import write_tsv  # noqa: E402
from sorobust.errors import SorobustError  # noqa: E402
from sorobust.paper import figures as figs  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PUBLISHED = REPO / "config" / "published.tsv"
N = 40
RADII = [0, 0.25, 0.5, 1.0, 1.58, 2.0, 3.0]
COLS = ["idx", "label", "pred", "correct", "target", "certificate", "converged"]
CRT_GAMMA = {2: "0.01", 3: "0.05"}


def _model(arch, method, gamma="0", rho="1.58", epochs=30, ntrain="all"):
    """A model folder of the plan's path grammar."""
    return f"certify/{arch}/{method}-g{gamma}-r{rho}-e{epochs}-n{ntrain}-s1"


def _series_paths():
    """(label, depth, [record paths]) of every synthetic series: per depth the four Table 1 models, CRT also under
    the reference protocol and randomized smoothing, and one conv-net series."""
    out = []
    for d in (2, 3):
        crt = _model(f"mlp-{d}x1024-softplus", "crt", CRT_GAMMA[d])
        cis = _model(f"mlp-{d}x1024-softplus", "crown-ibp", epochs=100)
        cir = _model(f"mlp-{d}x1024-relu", "crown-ibp", epochs=100)
        coap = _model(f"mlp-{d}x1024-relu", "coap", epochs=60)
        out += [(f"{d} CRT", d, [f"{crt}/crc-global-all-r1.58-n{N}.tsv"]),
                (f"{d} CRT ru", d, [f"{crt}/crc-global-runner-up-r1.58-n{N}.tsv"]),
                (f"{d} CRT rs", d, [f"{crt}/smoothing-all-r1.58-n{N}.tsv"]),
                (f"{d} CROWN-IBP s", d, [f"{cis}/ibp-all-r1.58-n{N}.tsv", f"{cis}/crown-all-r1.58-n{N}.tsv"]),
                (f"{d} COAP", d, [f"{coap}/coap-all-r1.58-n{N}.tsv"]),
                (f"{d} CROWN-IBP r", d, [f"{cir}/ibp-all-r1.58-n{N}.tsv", f"{cir}/crown-all-r1.58-n{N}.tsv"])]
    conv = _model("cnn-5c3k1s-tanh", "gamma", "0.01", rho="0", epochs=30)
    out.append(("conv", 1, [f"{conv}/crc-global-all-r1.58-n{N}.tsv"]))
    return out


@pytest.fixture(scope="module")
def drawn(tmp_path_factory):
    """Synthetic records under a results root, their spec, the computed data and the drawn Figure."""
    root = tmp_path_factory.mktemp("records")
    rng = random.Random(7)
    records = {}
    for _, _, paths in _series_paths():
        correct = [int(rng.random() < 0.85) for _ in range(N)]  # shared by the records of one model's series
        for p in paths:
            rows = [{"idx": i, "label": i % 10, "pred": i % 10, "correct": correct[i], "target": (i + 1) % 10,
                     "certificate": round(rng.uniform(0, 3.2), 6), "converged": int(rng.random() < 0.95)}
                    for i in range(N)]
            write_tsv(root / p, rows, COLS)
            records[p] = rows
    spec = {"series": [{"label": lab, "depth": d, "records": ps} for lab, d, ps in _series_paths()],
            "radii": RADII}
    data = figs.compute("certified_vs_radius", spec, root, published=PUBLISHED)
    fig = figs.build_figure("certified_vs_radius", data, title="profile test")
    yield {"root": root, "spec": spec, "records": records, "data": data, "fig": fig}
    plt.close(fig)


def _panels(fig):
    """{panel key: Axes} of the data panels (gid ``panel|KEY``)."""
    return {ax.get_gid().split("|", 1)[1]: ax for ax in fig.axes if (ax.get_gid() or "").startswith("panel|")}


def _lines(ax, kind):
    """Lines of ``ax`` whose gid starts with ``kind|`` (``series`` or ``paper``)."""
    return [ln for ln in ax.get_lines() if (ln.get_gid() or "").startswith(kind + "|")]


def _style(ln):
    """(colour, line style, marker) of a Line2D."""
    return (matplotlib.colors.to_hex(ln.get_color()), ln.get_linestyle(), ln.get_marker())


def _published():
    """{(depth, activation, training): certified accuracy} of Table 1, read with the csv module."""
    with open(PUBLISHED, newline="", encoding="utf-8") as f:
        return {(int(r["depth"]), r["activation"], r["training"]): float(r["value"])
                for r in csv.DictReader(f, delimiter="\t") if r["table"] == "table1" and r["column"] == "certified_acc"}


def test_one_panel_per_depth_and_conv(drawn):
    panels = _panels(drawn["fig"])
    assert list(panels) == ["2", "3", "conv"]  # depth order, the conv net last
    assert "2×[1024]" in panels["2"].get_title() and "CRT γ = 0.01" in panels["2"].get_title()
    assert "conv" in panels["conv"].get_title()
    for ax in panels.values():
        assert ax.get_xlabel() == "ℓ2 radius ρ"
        assert any(ln.get_gid() == "rho" and list(ln.get_xdata()) == [1.58, 1.58] for ln in ax.get_lines())
    assert panels["2"].get_ylabel() == "certified accuracy (%)"
    assert len(_lines(panels["2"], "series")) == 6 and len(_lines(panels["conv"], "series")) == 1


def test_styles_distinct_colour_per_method_linestyle_per_family(drawn):
    by_id = {d["id"]: d for d in drawn["data"]}
    colour_of, style_of = {}, {}
    for ax in _panels(drawn["fig"]).values():
        lines = _lines(ax, "series") + _lines(ax, "paper")
        styles = [_style(ln) for ln in lines]
        assert len(set(styles)) == len(styles), styles  # no two series of a panel share a style
        for ln in _lines(ax, "series"):
            d = by_id[ln.get_gid().split("|", 1)[1]]
            c, ls, _ = _style(ln)
            assert colour_of.setdefault(d["method"], c) == c  # one colour per method, in every panel
            assert {"sound": "-", "reference": "--", "probabilistic": ":"}[d["family"]] == ls
            assert style_of.setdefault(_style(ln), (d["method"], d["family"], d["certifier"])) == \
                (d["method"], d["family"], d["certifier"])  # a style means one thing across the figure
            assert c.upper() in figs.PALETTE
    assert len(set(colour_of.values())) == len(colour_of)  # distinct methods, distinct colours
    fam = {d["label"]: d["family"] for d in drawn["data"]}
    assert fam["2 CRT"] == "sound" and fam["2 CRT ru"] == "reference" and fam["2 CRT rs"] == "probabilistic"
    assert fam["2 CROWN-IBP s"] == fam["2 COAP"] == "sound"
    legend = [t.get_text() for t in drawn["fig"].legends[0].get_texts()]
    assert any("runner-up only (reference protocol)" in t for t in legend)
    assert any("(probabilistic)" in t for t in legend)
    assert any(t.startswith("paper") for t in legend)


def test_paper_markers_are_the_published_values(drawn):
    pub = _published()
    for key, ax in _panels(drawn["fig"]).items():
        got = {}
        for ln in _lines(ax, "paper"):
            assert list(ln.get_xdata()) == [1.58] and ln.get_marker() == "*"
            got[ln.get_gid().split("|")[2]] = float(ln.get_ydata()[0])
        if key == "conv":
            assert got == {}
            continue
        d = int(key)
        want = {"CRT (softplus)": pub[(d, "softplus", f"CRT, {CRT_GAMMA[d]}")],
                "CROWN-IBP (softplus)": pub[(d, "softplus", "CROWN-IBP")],
                "CROWN-IBP (relu)": pub[(d, "relu", "CROWN-IBP")], "COAP (relu)": pub[(d, "relu", "COAP")]}
        assert got == want and got["CRT (softplus)"] == {2: 69.79, 3: 57.78}[d]
        colours = {_style(ln)[0] for ln in _lines(ax, "series")}
        assert all(_style(ln)[0] in colours for ln in _lines(ax, "paper"))


def test_curves_equal_certified_accuracy_by_hand(drawn):
    recs = drawn["records"]
    lines = {ln.get_gid().split("|", 1)[1]: ln for ax in _panels(drawn["fig"]).values() for ln in _lines(ax, "series")}
    by_label = {d["label"]: d for d in drawn["data"]}
    for label, _, paths in _series_paths():
        tabs = [recs[p] for p in paths]
        want = []
        for r in RADII:
            hits = 0
            for i in range(N):  # correct = 1, converged, and the best certificate of its records > r
                ok = [t[i]["certificate"] for t in tabs if t[i]["correct"] == 1 and t[i]["converged"] == 1]
                hits += tabs[0][i]["correct"] == 1 and bool(ok) and max(ok) > r
            want.append(100.0 * hits / N)
        assert 0 < want[0] and want[-1] < want[0]  # the synthetic records exercise the radius range
        ln = lines[by_label[label]["id"]]
        assert list(ln.get_xdata()) == RADII
        assert list(ln.get_ydata()) == pytest.approx(want, abs=1e-12)
        assert by_label[label]["certified_acc"] == pytest.approx(want, abs=1e-12)


def test_caption_states_budget_and_protocol(drawn):
    text = drawn["fig"]._suptitle.get_text().replace("\n", " ")
    for s in ("profile test", "CRT 30 / all", "CROWN-IBP 100 / all", "COAP 60 / all", f"Test points per curve: {N}",
              "runner-up class only", "probabilistic", "all wrong classes"):
        assert s in text, (s, text)


def test_default_published_is_the_repository_file():
    assert figs.default_published() is not None
    assert figs.load_paper_points() == figs.load_paper_points(PUBLISHED)
    assert {(d, a, t): v for (d, a, t), v in figs.load_paper_points(PUBLISHED).items()} == _published()


def test_shared_style_in_one_panel_is_refused(drawn):
    spec = dict(drawn["spec"])
    spec["series"] = [drawn["spec"]["series"][0], dict(drawn["spec"]["series"][0], label="again")]
    data = figs.compute("certified_vs_radius", spec, drawn["root"], published={})
    with pytest.raises(SorobustError, match="share the style"):
        figs.series_styles(data)


def test_rendering_is_deterministic(drawn, tmp_path):
    small = {"series": [s for s in drawn["spec"]["series"] if s["depth"] == 2], "radii": RADII}
    data = figs.compute("certified_vs_radius", small, drawn["root"], published=PUBLISHED)
    a = figs.draw("certified_vs_radius", data, tmp_path / "a" / "certified_vs_radius", title="t")
    b = figs.draw("certified_vs_radius", data, tmp_path / "b" / "certified_vs_radius", title="t")
    assert [p.name for p in a] == ["certified_vs_radius.png", "certified_vs_radius.pdf"]
    assert [p.read_bytes() for p in a] == [p.read_bytes() for p in b]


def test_every_function_has_a_docstring():
    fns = [f for _, f in inspect.getmembers(figs, inspect.isfunction) if f.__module__ == figs.__name__]
    assert fns and all(inspect.getdoc(f) for f in fns), [f.__name__ for f in fns if not inspect.getdoc(f)]
