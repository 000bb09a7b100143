"""The experiment plan: from a validated config to every model, record, table and figure of the paper.

This is the one place that knows which models and which per-point records each table and figure needs. The
Snakemake workflow (``workflow/rules/common.smk``) asks it for job inputs and targets, and ``sorobust table`` /
``sorobust figure`` / ``sorobust audit`` read the same plan (``results/{profile}/plan.json``), so the DAG, the
renderers and the auditor cannot drift apart.

Path grammar (relative to the results root ``results/{profile}``; every parameter that changes an output is
in its path, the remaining hyper-parameters are fixed per profile and recorded in ``plan.json`` and in every
provenance record)::

    models/{arch}/{method}-g{gamma}-r{rho}-e{epochs}-n{ntrain}-s{seed}/model.pt     (+ model.json)
    certify/{model}/{certifier}-{targets}-r{rho}-n{ntest}.tsv                         (+ .json)
    attack/{model}/{attack}-{targets}-r{rho}-n{ntest}.tsv                             (+ .json)
    curvature/{model}/K-n{ntest}.tsv                                                  (+ .json)
    tables/{table}.{csv,md,tex}   (+ {table}.meta.json)
    figures/{figure}.{png,pdf}    (+ {figure}.meta.json)
    MANIFEST.tsv

``{model}`` is ``{arch}/{method}-g{gamma}-r{rho}-e{epochs}-n{ntrain}-s{seed}``; ``arch`` a model spec
(``mlp-2x1024-softplus``, ``cnn-5c3k1s-tanh``); ``certifier`` one of :data:`CERTIFIERS`; ``targets`` ``all``
(sound) or ``runner-up`` (the reference protocol); ``ntrain``/``ntest`` a count or ``all``. Numbers are written
with ``%g``. Training radii are 0 for methods that do not use one (standard and γ-regularised training), so those
models are shared between tables.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

CERTIFIERS = ("crc-global", "crc-local", "crown", "ibp", "crown-ibp", "coap", "cnn-cert")
ATTACKS = ("second-order", "pgd")
TRAIN_METHODS = ("standard", "gamma", "crt", "pgd", "trades", "crown-ibp", "coap")
TABLES = ("table1", "table2", "table3", "table4", "table5", "iclr_table3", "protocol")
FIGURES = ("curvature", "certified_vs_radius")
_RADIUS_METHODS = ("crt", "pgd", "trades", "crown-ibp", "coap")


def num(x) -> str:
    """Numbers in paths: ``%g`` (0.01 → '0.01', 1.58 → '1.58', 0.0 → '0')."""
    return f"{float(x):g}"


def count(n) -> str:
    return "all" if n in (None, "all") else str(int(n))


@dataclass(frozen=True)
class ModelKey:
    arch: str
    method: str
    gamma: float
    rho: float
    epochs: int
    ntrain: str
    seed: int

    @property
    def id(self) -> str:
        return (f"{self.arch}/{self.method}-g{num(self.gamma)}-r{num(self.rho)}-e{self.epochs}-n{self.ntrain}"
                f"-s{self.seed}")


class Plan:
    """Everything a profile's config asks for. Build with :func:`build_plan`."""

    def __init__(self, config: dict):
        self.config = config
        self.profile = config["name"]
        self.models: dict[str, ModelKey] = {}
        self.records: set[str] = set()
        self.tables: dict[str, dict] = {}
        self.figures: dict[str, dict] = {}

    # ------------------------------------------------------------------------------------------------ models
    def mlp(self, depth: int, act: str) -> str:
        return f"mlp-{depth}x{self.config['width']}-{act}"

    def cnn(self, act: str) -> str:
        c = self.config["conv"]
        return f"cnn-{c['channels']}c{c['kernel']}k{c['stride']}s-{act}"

    def model(self, arch: str, method: str, gamma: float = 0.0, rho: float = 0.0) -> str:
        if method == "gamma" and gamma == 0:
            method = "standard"  # γ = 0 is plain cross-entropy training: one shared model
        if method not in _RADIUS_METHODS:
            rho = 0.0
        if method == "standard":
            gamma = 0.0
        tr = self.config["training"][method]
        key = ModelKey(arch, method, float(gamma), float(rho), int(tr["epochs"]),
                       count(tr.get("n_train", self.config["n_train"])), int(self.config["seed"]))
        self.models[key.id] = key
        return key.id

    def train_args(self, model_id: str) -> list[str]:
        """``sorobust train`` options of a model (beyond --arch/--method/--gamma/--rho/--epochs/--seed/--out)."""
        key = self.models[model_id]
        tr = dict(self.config["training"][key.method])
        tr.pop("epochs")
        tr.pop("n_train", None)  # in the path
        args = []
        for k, v in sorted(tr.items()):
            args += [f"--{k.replace('_', '-')}", str(v)]
        if key.ntrain != "all":
            args += ["--limit", key.ntrain]
        return args

    # ----------------------------------------------------------------------------------------------- records
    def certify(self, model_id: str, certifier: str, targets: str, rho: float, n) -> str:
        p = f"certify/{model_id}/{certifier}-{targets}-r{num(rho)}-n{count(n)}.tsv"
        self.records.add(p)
        return p

    def attack(self, model_id: str, attack: str, targets: str, rho: float, n) -> str:
        p = f"attack/{model_id}/{attack}-{targets}-r{num(rho)}-n{count(n)}.tsv"
        self.records.add(p)
        return p

    def curvature(self, model_id: str, n) -> str:
        p = f"curvature/{model_id}/K-n{count(n)}.tsv"
        self.records.add(p)
        return p

    # ------------------------------------------------------------------------------------------------ tables
    def _row(self, table: str, depth, activation: str, training: str, network: str, model_id: str, **inputs):
        self.tables.setdefault(table, {"rows": []})["rows"].append(
            {"key": {"depth": depth, "activation": activation, "training": training}, "network": network,
             "training": training, "model": model_id, "inputs": inputs})

    def net_label(self, depth, act: str) -> str:
        return f"{depth}×[{self.config['width']}], {act}"

    def to_json(self) -> dict:
        return {"profile": self.profile, "config": self.config,
                "models": {k: asdict(v) for k, v in sorted(self.models.items())},
                "train_args": {k: self.train_args(k) for k in sorted(self.models)},
                "records": sorted(self.records), "tables": self.tables, "figures": self.figures}


def _g(x) -> str:
    return num(x)


def build_plan(config: dict) -> Plan:
    """The plan of a (schema-validated) config: see the module docstring and ``config/README.md``."""
    P = Plan(config)
    T = config["tables"]
    n_cert = config["test"]["n_certified"]
    n_mean = config["test"]["n_certificate"]

    if "table1" in T:  # certified accuracy at ρ = 1.58: CRT vs CROWN-IBP vs COAP
        c = T["table1"]
        rho = c["rho"]
        for d in c["depths"]:
            g = c["crt_gamma"][str(d)]
            m = P.model(P.mlp(d, "softplus"), "crt", g, rho)
            P._row("table1", d, "softplus", f"CRT, {_g(g)}", P.net_label(d, "softplus"), m,
                   crc=P.certify(m, "crc-global", "all", rho, n_cert),
                   crc_runner_up=P.certify(m, "crc-global", "runner-up", rho, n_cert))
            for act in ("softplus", "relu"):
                if act == "relu":
                    m = P.model(P.mlp(d, "relu"), "coap", 0.0, rho)
                    P._row("table1", d, "relu", "COAP", P.net_label(d, "relu"), m,
                           coap=P.certify(m, "coap", "all", rho, n_cert))
                m = P.model(P.mlp(d, act), "crown-ibp", 0.0, rho)
                P._row("table1", d, act, "CROWN-IBP", P.net_label(d, act), m,
                       ibp=P.certify(m, "ibp", "all", rho, n_cert), crown=P.certify(m, "crown", "all", rho, n_cert))

    if "table2" in T:  # CROWN vs CRC mean certificates, runner-up target
        c = T["table2"]
        rho = c["rho"]
        for d in c["depths"]:
            trainings = [("standard", "standard", 0.0)] + [(f"γ={_g(g)}", "gamma", g) for g in c["gammas"]] + \
                        [(f"CRT, {_g(c['crt_gamma'])}", "crt", c["crt_gamma"])]
            for label, method, g in trainings:
                m = P.model(P.mlp(d, "sigmoid"), method, g, rho)
                P._row("table2", d, "sigmoid", label, P.net_label(d, "sigmoid"), m,
                       crc=P.certify(m, "crc-global", "runner-up", rho, n_mean),
                       crown=P.certify(m, "crown", "runner-up", rho, n_mean),
                       crc_all=P.certify(m, "crc-global", "all", rho, n_mean))

    if "table3" in T:  # how often primal = dual
        c = T["table3"]
        rho = c["rho"]
        for d in c["depths"]:
            for g in (0.0, c["gamma"][str(d)]):
                m = P.model(P.mlp(d, "sigmoid"), "gamma", g, rho)
                P._row("table3", d, "sigmoid", _g(g), P.net_label(d, "sigmoid"), m,
                       crc=P.certify(m, "crc-global", "runner-up", rho, n_cert),
                       attack=P.attack(m, "second-order", "runner-up", rho, n_cert))

    if "table4" in T:  # global vs local curvature
        c = T["table4"]
        rho = c["rho"]
        d = c["depth"]
        trainings = [("standard", "standard", 0.0)] + [(f"CRT, {_g(g)}", "crt", g) for g in c["crt_gammas"]]
        for label, method, g in trainings:
            m = P.model(P.mlp(d, "sigmoid"), method, g, rho)
            P._row("table4", d, "sigmoid", label, P.net_label(d, "sigmoid"), m,
                   crc=P.certify(m, "crc-global", "runner-up", rho, n_mean),
                   crc_local=P.certify(m, "crc-local", "runner-up", rho, n_mean),
                   crc_all=P.certify(m, "crc-global", "all", rho, n_mean))

    if "table5" in T:  # CRC vs CNN-Cert on the conv net
        c = T["table5"]
        rho = c["rho"]
        for g in c["gammas"]:
            m = P.model(P.cnn("tanh"), "gamma", g, rho)
            cc = config["conv"]
            P._row("table5", 1, "tanh", _g(g), f"conv {cc['channels']}×{cc['kernel']}×{cc['kernel']}, tanh", m,
                   crc=P.certify(m, "crc-global", "runner-up", rho, n_mean),
                   cnncert=P.certify(m, "cnn-cert", "runner-up", rho, n_mean),
                   crc_all=P.certify(m, "crc-global", "all", rho, n_mean))

    if "iclr_table3" in T:  # CRT vs PGD vs TRADES
        c = T["iclr_table3"]
        rho = c["rho"]
        for d in c["depths"]:
            for label, method, g in [("PGD", "pgd", 0.0), ("TRADES", "trades", 0.0),
                                     (f"CRT,{_g(c['crt_gamma'])}", "crt", c["crt_gamma"])]:
                m = P.model(P.mlp(d, "sigmoid"), method, g, rho)
                P._row("iclr_table3", d, "sigmoid", label, P.net_label(d, "sigmoid"), m,
                       crc=P.certify(m, "crc-global", "runner-up", rho, n_mean),
                       crown=P.certify(m, "crown", "runner-up", rho, n_mean),
                       pgd=P.attack(m, "pgd", "all", rho, n_mean),
                       crc_all=P.certify(m, "crc-global", "all", rho, n_mean))

    if "protocol" in T:  # reference protocol (runner-up) beside the sound all-class certificate
        for tname, tab in list(P.tables.items()):
            for row in tab["rows"]:
                ins = row["inputs"]
                ru = ins.get("crc_runner_up") if tname == "table1" else ins.get("crc")
                al = ins.get("crc") if tname == "table1" else ins.get("crc_all")
                if ru and al and "runner-up" in ru and "-all-" in al:
                    P._row("protocol", row["key"]["depth"], row["key"]["activation"], row["training"],
                           f"{tname}: {row['network']}", row["model"], runner_up=ru, all=al)

    F = config["figures"]
    if "curvature" in F:
        c = F["curvature"]
        d, act = c["depth"], c["activation"]
        pts = []
        for method in ("crt", "pgd"):
            for g in c["gammas"]:
                m = P.model(P.mlp(d, act), method, g, c["rho"])
                pts.append({"method": method.upper(), "gamma": g, "model": m,
                            "curvature": P.curvature(m, c["n_points"])})
        P.figures["curvature"] = {"points": pts, "network": P.net_label(d, act)}
    if "certified_vs_radius" in F and "table1" in P.tables:
        series = []
        for row in P.tables["table1"]["rows"]:
            ins = row["inputs"]
            files = [ins[k] for k in ("crc", "coap", "ibp", "crown") if k in ins]
            series.append({"label": f"{row['network']} {row['training']}", "depth": row["key"]["depth"],
                           "records": files})
        P.figures["certified_vs_radius"] = {"series": series, "radii": F["certified_vs_radius"]["radii"]}
    return P


# the package modules each stage's outputs depend on: a change in one reruns that stage (and what follows)
STAGE_MODULES = {
    "train": ("activations", "models", "data", "curvature", "attacks", "train", "certify/crown", "certify/coap",
              "certify/crc", "cli", "artifacts"),
    "certify": ("activations", "models", "data", "curvature", "certify/crc", "certify/crown", "certify/coap",
                "cli", "artifacts"),
    "attack": ("activations", "models", "data", "curvature", "attacks", "certify/crc", "cli", "artifacts"),
    "render": ("paper/tables", "paper/figures", "audit", "artifacts", "workflow", "cli"),
}


def code_hash(stage: str) -> str:
    """sha256 (16 hex digits) of the package modules ``stage`` depends on (:data:`STAGE_MODULES`)."""
    import hashlib
    from pathlib import Path

    pkg = Path(__file__).parent
    h = hashlib.sha256()
    for mod in sorted(STAGE_MODULES[stage]):
        p = pkg / f"{mod}.py"
        h.update(mod.encode() + b"\0" + (p.read_bytes() if p.is_file() else b""))
    return h.hexdigest()[:16]


def plan_json(config: dict) -> str:
    return json.dumps(build_plan(config).to_json(), indent=1, sort_keys=True, ensure_ascii=False)


def certify_args(certifier: str) -> list[str]:
    """``sorobust certify`` options of a certifier name of the path grammar."""
    if certifier.startswith("crc-"):
        return ["--method", "crc", "--curvature", certifier.split("-", 1)[1]]
    return ["--method", certifier]
