"""The experiment plan: from a validated config to every model, record, table and figure of the paper.

This is the one place that knows which models and which per-point records each table and figure needs. The
Snakemake workflow (``workflow/rules/common.smk``) asks it for job inputs and targets, and ``sorobust table`` /
``sorobust figure`` / ``sorobust audit`` read the same plan (``results/{profile}/plan.json``), so the DAG, the
renderers and the auditor cannot drift apart.

Path grammar (relative to the results root ``results/{profile}``; every parameter that changes an output is
in its path, the remaining hyper-parameters are fixed per profile and recorded in ``plan.json`` and in every
provenance record)::

    models/{arch}/{method}-g{gamma}-r{rho}-e{epochs}-n{ntrain}-s{seed}/model.pt     (+ model.json)
    certify/{model}/{certifier}-{targets}-n{ntest}.tsv                                (+ .json)
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

A certify record holds each point's certificate (a radius), valid for every ρ, so its path has no ρ: the radius a
table certifies at belongs to the table (its spec's ``rho``) and is applied by one rule,
:func:`sorobust.summaries.certified_at`. Attacks depend on their radius, so theirs is in their path.
"""

from __future__ import annotations

import ast
import copy
import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from . import vocab

# the vocabularies of the path grammar, from their one definition (sorobust.vocab)
CERTIFIERS = tuple(vocab.CERTIFIERS)
ATTACKS = vocab.values(vocab.Attack)
TRAIN_METHODS = vocab.values(vocab.TrainMethod)
TABLES = vocab.values(vocab.Table)
FIGURES = vocab.values(vocab.Figure)
TARGETS = tuple(t.value for t in vocab.WORKFLOW_TARGETS)
_RADIUS_METHODS = tuple(k for k, spec in vocab.TRAIN_METHODS.items() if spec.uses_radius)
#: the published sound results beside the headline table (relative to the workflow's working directory, the
#: repository root); an input of the headline's rule, hashed in its sidecar like ``config/published.tsv``
PUBLISHED_SOUND = "config/published_sound.tsv"
#: layout of the tables this plan asks for (``sorobust.paper.tables``): 2 (issue 10) renders timing columns beside
#: the paper's GPU seconds without a difference and with the machine that measured them. A table spec without the
#: key (plans written before) renders as layout 1, so committed results folders still re-aggregate unchanged.
TABLE_LAYOUT = 3
# layout 3 (issue 12): records hold radii; every table spec carries the ρ its certified columns are taken at


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
    def certify(self, model_id: str, certifier: str, targets: str, n) -> str:
        p = f"certify/{model_id}/{certifier}-{targets}-n{count(n)}.tsv"
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
    def _row(self, table: str, depth, activation: str, training: str, network: str, model_id: str,
             rho: float | None = None, **inputs):
        """A table row: its key, labels, model and input records, and the radius ``rho`` its certified columns are
        taken at (default: the table's config ``rho``)."""
        if rho is None:
            rho = self.config["tables"][table].get("rho")
        self.tables.setdefault(table, {"rows": []})["rows"].append(
            {"key": {"depth": depth, "activation": activation, "training": training}, "network": network,
             "training": training, "model": model_id, "rho": rho, "inputs": inputs})

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
                   crc=P.certify(m, "crc-global", "all", n_cert),
                   crc_runner_up=P.certify(m, "crc-global", "runner-up", n_cert))
            for act in ("softplus", "relu"):
                if act == "relu":
                    m = P.model(P.mlp(d, "relu"), "coap", 0.0, rho)
                    P._row("table1", d, "relu", "COAP", P.net_label(d, "relu"), m,
                           coap=P.certify(m, "coap", "all", n_cert))
                m = P.model(P.mlp(d, act), "crown-ibp", 0.0, rho)
                P._row("table1", d, act, "CROWN-IBP", P.net_label(d, act), m,
                       ibp=P.certify(m, "ibp", "all", n_cert), crown=P.certify(m, "crown", "all", n_cert))

    if "table2" in T:  # CROWN vs CRC mean certificates, runner-up target
        c = T["table2"]
        rho = c["rho"]
        for d in c["depths"]:
            trainings = [("standard", "standard", 0.0)] + [(f"γ={_g(g)}", "gamma", g) for g in c["gammas"]] + \
                        [(f"CRT, {_g(c['crt_gamma'])}", "crt", c["crt_gamma"])]
            for label, method, g in trainings:
                m = P.model(P.mlp(d, "sigmoid"), method, g, rho)
                P._row("table2", d, "sigmoid", label, P.net_label(d, "sigmoid"), m,
                       crc=P.certify(m, "crc-global", "runner-up", n_mean),
                       crown=P.certify(m, "crown", "runner-up", n_mean),
                       crc_all=P.certify(m, "crc-global", "all", n_mean))

    if "table3" in T:  # how often primal = dual
        c = T["table3"]
        rho = c["rho"]
        for d in c["depths"]:
            for g in (0.0, c["gamma"][str(d)]):
                m = P.model(P.mlp(d, "sigmoid"), "gamma", g, rho)
                P._row("table3", d, "sigmoid", _g(g), P.net_label(d, "sigmoid"), m,
                       crc=P.certify(m, "crc-global", "runner-up", n_cert),
                       attack=P.attack(m, "second-order", "runner-up", rho, n_cert))

    if "table4" in T:  # global vs local curvature
        c = T["table4"]
        rho = c["rho"]
        d = c["depth"]
        trainings = [("standard", "standard", 0.0)] + [(f"CRT, {_g(g)}", "crt", g) for g in c["crt_gammas"]]
        for label, method, g in trainings:
            m = P.model(P.mlp(d, "sigmoid"), method, g, rho)
            P._row("table4", d, "sigmoid", label, P.net_label(d, "sigmoid"), m,
                   crc=P.certify(m, "crc-global", "runner-up", n_mean),
                   crc_local=P.certify(m, "crc-local", "runner-up", n_mean),
                   crc_all=P.certify(m, "crc-global", "all", n_mean))

    if "table5" in T:  # CRC vs CNN-Cert on the conv net
        c = T["table5"]
        rho = c["rho"]
        for g in c["gammas"]:
            m = P.model(P.cnn("tanh"), "gamma", g, rho)
            cc = config["conv"]
            P._row("table5", 1, "tanh", _g(g), f"conv {cc['channels']}×{cc['kernel']}×{cc['kernel']}, tanh", m,
                   crc=P.certify(m, "crc-global", "runner-up", n_mean),
                   cnncert=P.certify(m, "cnn-cert", "runner-up", n_mean),
                   crc_all=P.certify(m, "crc-global", "all", n_mean))

    if "iclr_table3" in T:  # CRT vs PGD vs TRADES
        c = T["iclr_table3"]
        rho = c["rho"]
        for d in c["depths"]:
            for label, method, g in [("PGD", "pgd", 0.0), ("TRADES", "trades", 0.0),
                                     (f"CRT,{_g(c['crt_gamma'])}", "crt", c["crt_gamma"])]:
                m = P.model(P.mlp(d, "sigmoid"), method, g, rho)
                P._row("iclr_table3", d, "sigmoid", label, P.net_label(d, "sigmoid"), m,
                       crc=P.certify(m, "crc-global", "runner-up", n_mean),
                       crown=P.certify(m, "crown", "runner-up", n_mean),
                       pgd=P.attack(m, "pgd", "all", rho, n_mean),
                       crc_all=P.certify(m, "crc-global", "all", n_mean))

    if "protocol" in T:  # reference protocol (runner-up) beside the sound all-class certificate
        for tname, tab in list(P.tables.items()):
            for row in tab["rows"]:
                ins = row["inputs"]
                ru = ins.get("crc_runner_up") if tname == "table1" else ins.get("crc")
                al = ins.get("crc") if tname == "table1" else ins.get("crc_all")
                if ru and al and "runner-up" in ru and "-all-" in al:
                    P._row("protocol", row["key"]["depth"], row["key"]["activation"], row["training"],
                           f"{tname}: {row['network']}", row["model"], rho=row["rho"], runner_up=ru, all=al)

    if "headline" in T and "table1" in P.tables:  # the sound answer to the headline (issue 10)
        c = T["headline"]
        rho = T["table1"]["rho"]
        for row in P.tables["table1"]["rows"]:
            if row["key"]["depth"] != c["depth"]:
                continue
            m = row["model"]
            P._row("headline", c["depth"], row["key"]["activation"], row["training"], row["network"], m, rho=rho,
                   **row["inputs"], autoattack=P.attack(m, "autoattack", "all", rho, c.get("n_attack", "all")))
        if "headline" in P.tables:
            P.tables["headline"].update({"rho": rho, "dataset": config["dataset"],
                                         "aa_version": c.get("aa_version", "standard"),
                                         "published_sound": PUBLISHED_SOUND})
    for tab in P.tables.values():
        tab["layout"] = TABLE_LAYOUT

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


# Rerun triggers. A compute stage reruns when the numbers it writes change, never for a refactor, a docstring or
# the CLI: its trigger is a numerics version, bumped by hand in the change that alters its outputs (the golden
# fingerprints of tests/test_fingerprints.py fail until it is). Rendering is cheap and reruns on any change of the
# code of the modules it uses: a hash of their syntax trees without docstrings (comments are not in the tree), so
# editing a docstring or a comment anywhere in sorobust/ reruns nothing.
# certify 2: float64 re-evaluation of CRC bounds; attack 2: float64 verdicts of PGD and the second-order attack
STAGE_VERSIONS = {"train": 1, "certify": 2, "attack": 2}
STAGE_MODULES = {
    "render": ("paper/tables", "paper/figures", "audit", "artifacts", "workflow", "vocab"),
}


def _code_of(source: str) -> bytes:
    """The code of a module's ``source``: its syntax tree without docstrings (module, class and function), dumped
    without positions; comments and formatting are not in the tree."""
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) \
                    and isinstance(first.value.value, str):
                node.body = node.body[1:] or [ast.Pass()]
    return ast.dump(tree, include_attributes=False).encode()


def code_hash(stage: str) -> str:
    """The rerun trigger of ``stage``: ``{stage}-v{N}`` for the compute stages (:data:`STAGE_VERSIONS`), else
    sha256 (16 hex digits) of the code of the package modules it depends on (:data:`STAGE_MODULES`, read by
    :func:`_code_of`: docstrings and comments do not count); a listed module that is missing is an error, not
    empty bytes."""
    if stage in STAGE_VERSIONS:
        return f"{stage}-v{STAGE_VERSIONS[stage]}"
    pkg = Path(__file__).parent
    h = hashlib.sha256()
    for mod in sorted(STAGE_MODULES[stage]):
        p = pkg / f"{mod}.py"
        if not p.is_file():
            raise FileNotFoundError(f"STAGE_MODULES[{stage!r}] lists {mod!r}, but {p} does not exist")
        h.update(mod.encode() + b"\0" + _code_of(p.read_text()))
    return h.hexdigest()[:16]


# ------------------------------------------------------------------------------------------- derived profiles
#: keys a derived profile may set besides ``base`` and ``restrict``: runtime and naming only, never a budget
DERIVED_KEYS = ("name", "device", "data_dir")
_DEPTH_TABLES = ("table1", "table2", "table3", "iclr_table3")


def is_derived(config: dict) -> bool:
    """A derived profile names a ``base`` config and restricts it (``workflow/schemas/derived.schema.yaml``)."""
    return "base" in config


def derive_config(derived: dict, root: Path | str = ".") -> dict:
    """The base config of a derived profile, restricted, with only its runtime keys replaced.

    Every hyper-parameter (epochs, batch sizes, learning rates, schedules, test-point counts, ρ, γ) comes from the
    base file itself, so the derived profile's budgets cannot drift from it. ``restrict.depths`` keeps the MLP
    depths listed (a table whose depths all go is dropped; Table 4 and the curvature figure have one depth each),
    ``restrict.conv: false`` drops the conv-net table, ``restrict.tables``/``restrict.figures`` keep only those
    listed. Restricting never adds or changes a model: every model of the result is one of the base plan's, with the
    same path (``tests/test_workflow.py`` checks this). The result records ``derived: {base, base_sha256, restrict}``.
    """
    root = Path(root)
    base_path = root / derived["base"]
    if not base_path.is_file():
        raise FileNotFoundError(f"derived profile {derived.get('name')!r}: base config {base_path} not found; "
                                f"'base' is a path relative to the repository root, e.g. config/config.yaml")
    text = base_path.read_bytes()
    base = load_yaml(text.decode(), str(base_path))
    if is_derived(base):
        raise ValueError(f"{base_path} is itself a derived profile; a base must be a full config")
    cfg = copy.deepcopy(base)
    for k in DERIVED_KEYS:
        if k in derived:
            cfg[k] = derived[k]
    r = derived.get("restrict", {})
    T, F = cfg["tables"], cfg["figures"]
    if "depths" in r:
        keep = set(r["depths"])
        for t in _DEPTH_TABLES:
            if t in T:
                T[t]["depths"] = [d for d in T[t]["depths"] if d in keep]
                if not T[t]["depths"]:
                    del T[t]
        if "table4" in T and T["table4"]["depth"] not in keep:
            del T["table4"]
        if "headline" in T and T["headline"]["depth"] not in keep:
            del T["headline"]
        if "curvature" in F and F["curvature"]["depth"] not in keep:
            del F["curvature"]
    if not r.get("conv", True):
        T.pop("table5", None)
    if "tables" in r:
        for t in list(T):
            if t not in r["tables"]:
                del T[t]
    if "figures" in r:
        for f in list(F):
            if f not in r["figures"]:
                del F[f]
    if "table1" not in T:
        F.pop("certified_vs_radius", None)
        T.pop("headline", None)  # its rows are Table 1's
    cfg["derived"] = {"base": derived["base"], "base_sha256": hashlib.sha256(text).hexdigest(),
                      "restrict": copy.deepcopy(r)}
    return cfg


def load_yaml(text: str, where: str = "<config>"):
    """``yaml.safe_load`` that rejects duplicate keys (PyYAML keeps the last one silently)."""
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    def mapping(loader, node, deep=False):
        seen = set()
        for k, _ in node.value:
            key = loader.construct_object(k, deep=deep)
            if key in seen:
                raise ValueError(f"{where}: duplicate key {key!r} (line {k.start_mark.line + 1}); keep one")
            seen.add(key)
        return loader.construct_mapping(node, deep)

    Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, mapping)
    return yaml.load(text, Loader=Loader)


def plan_json(config: dict) -> str:
    return json.dumps(build_plan(config).to_json(), indent=1, sort_keys=True, ensure_ascii=False)


def attack_args(attack: str, config: dict) -> list[str]:
    """``sorobust attack`` options of an attack name of the path grammar: AutoAttack's version is a per-profile
    hyper-parameter (``tables.headline.aa_version``, recorded in ``plan.json`` and in every record's provenance)."""
    if attack == "autoattack":
        version = config.get("tables", {}).get("headline", {}).get("aa_version", "standard")
        return ["--method", "autoattack", "--aa-version", str(version)]
    return ["--method", attack]


def parse_record(path: str) -> dict:
    """The fields of a record path of the grammar (module docstring): ``kind`` (certify, attack, curvature),
    ``model``, ``method`` (certifier or attack), ``targets``, ``rho`` and ``n`` (a count or ``all``); curvature
    records have no method, targets or radius."""
    kind, arch, variant, name = path.removesuffix(".tsv").split("/")
    out = {"kind": kind, "model": f"{arch}/{variant}", "method": None, "targets": None, "rho": None, "n": None}
    if kind == "curvature":
        out["n"] = name.removeprefix("K-n")
        return out
    head, n = name.rsplit("-n", 1)
    rho = None
    if kind != "certify":  # a certificate holds for every radius (module docstring)
        head, rho = head.rsplit("-r", 1)
    for targets in TARGETS:
        if head.endswith(f"-{targets}"):
            out.update(method=head[:-len(targets) - 1], targets=targets)
            break
    else:
        raise ValueError(f"{path}: not a record path of the grammar (no targets)")
    out.update(rho=None if rho is None else float(rho), n=n)
    return out


def certify_args(certifier: str) -> list[str]:
    """``sorobust certify`` options of a certifier name of the path grammar (its :data:`sorobust.vocab.CERTIFIERS`
    entry)."""
    spec = vocab.CERTIFIERS[certifier]
    return ["--method", spec.method.value, *spec.options]
