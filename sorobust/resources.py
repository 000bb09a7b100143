"""What every workflow job asks a scheduler for: memory, run time, CPUs, GPUs (issue 13).

The numbers are not guessed per rule. They come from the ``benchmark:`` records of a measured run (the quick
profile, ``results/quick/benchmarks``: wall seconds ``s`` and peak resident memory ``max_rss`` of every job),
fitted once into ``workflow/resources.json`` (:func:`calibrate`; ``python -m sorobust.resources calibrate``), and
scaled to each job's budget by :func:`request`, which ``workflow/rules/common.smk`` (``job_resources``) calls for
every rule:

* **work** of a job: training ``epochs × training images × size`` (× ``pgd_steps + 1`` for PGD and TRADES, whose
  every batch runs that many forward-backward passes); certification, attacks and curvature bounds
  ``test points × size``; ``size`` is the architecture's multiply-accumulates per forward pass in millions
  (:func:`arch_size`: ``784·w + (d−2)·w² + 10·w`` for ``mlp-{d}x{w}``, the convolution over its output positions
  plus the dense layer for the conv net), so width and depth enter through it. Rendering jobs (data, plan,
  tables, figures, manifest) have no work: their cost does not grow with the budget.
* **run time** = ``SAFETY × (s0 + a·work)`` where ``s0`` is the run's startup floor (its shortest job) and ``a``
  the largest seconds per unit of work among the measured jobs of the same rule, kind (training method,
  certifier and targets, attack and targets) and family (mlp or cnn); rendering jobs take ``SAFETY ×`` their
  rule's longest measured job. In minutes, at least :data:`RUNTIME_FLOOR_MIN` (which also covers the small nets
  of the smoke profile, whose jobs are dominated by fixed costs: loading data, evaluating the test set).
* **memory** = ``SAFETY ×`` the memory profile of the same rule, kind and family at the job's size: the largest
  measured peak at each measured size, non-decreasing in size, linear between measured sizes and beyond the
  largest along its steepest segment (:func:`_profile`, :func:`_interpolate`); the smoke profile's records
  (16-unit nets) anchor its small end. Rendering jobs take ``SAFETY ×`` their rule's largest peak.
  At least :data:`MEM_FLOOR_MB`, plus :data:`GPU_HOST_MB` for a job that holds a GPU (the CUDA context and
  libraries in host memory, an allowance: no GPU was measured).

So every measured job's request is at least ``SAFETY`` times what it used (``tests/test_resources.py`` checks this
on every record), and the request of a larger budget grows linearly with its work. A kind the quick profile lacks
but the smoke profile has (AutoAttack, until the quick profile runs it) takes its run time per test point from the
smoke records (:func:`calibrate`); a kind without any record takes the largest of the keys of its rule and family,
then of its rule, then (AutoAttack) of the attack rule. The measurements are CPU ones (2 cores, 1–2 threads per
job), so on a GPU the run times are upper bounds. ``attempt`` (Snakemake's retry counter) multiplies both, so a job
that ran out of memory or time is retried with twice as much (``retries:`` in ``profiles/slurm``).
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
from pathlib import Path
from typing import Any, Mapping, Optional

#: every request is at least this multiple of what the calibrating run measured
SAFETY = 2.0
#: the shortest run time requested (minutes): below that a tighter limit buys nothing and a loaded node may need it
RUNTIME_FLOOR_MIN = 10
#: the smallest memory requested (MB)
MEM_FLOOR_MB = 1024
#: host memory added for a job that holds a GPU (CUDA context, cuBLAS/cuDNN): an allowance, not measured
GPU_HOST_MB = 2048
#: training and test set sizes, for the counts written "all" in paths
DATASET_SIZES = {"mnist": (60000, 10000), "fashion-mnist": (60000, 10000)}
#: the rules whose cost grows with the budget (one GPU each on a GPU profile)
SCALED_RULES = ("train", "certify", "attack", "autoattack", "curvature")
#: the rules whose jobs may hold a GPU
GPU_RULES = SCALED_RULES

_MLP = re.compile(r"^mlp-(\d+)x(\d+)-[a-z]+$")
_CNN = re.compile(r"^cnn-(\d+)c(\d+)k(\d+)s-[a-z]+$")
_MODEL = re.compile(r"^(?P<method>[a-z-]+?)-g(?P<gamma>[^/]+)-r(?P<rho>[^/]+)-e(?P<epochs>\d+)-n(?P<ntrain>\d+|all)"
                    r"-s(?P<seed>\d+)$")
#: a certify or attack record name (certify records hold radii and have no -r{ρ} since issue 12)
_RECORD = re.compile(r"^(?P<kind>.+?)-(?P<targets>all|runner-up)(?:-r(?P<rho>[^-/]+))?-n(?P<ntest>\d+|all)$")


def arch_size(arch: str) -> float:
    """Multiply-accumulates of one forward pass of an architecture spec, in millions (``mlp-2x1024-softplus``:
    784·1024 + 1024·10 → 0.813; ``cnn-5c3k1s-tanh``: 5·9·26² + 10·5·26² → 0.064)."""
    m = _MLP.match(arch)
    if m:
        depth, width = int(m.group(1)), int(m.group(2))
        dims = [784] + [width] * (depth - 1) + [10]
        return sum(a * b for a, b in zip(dims, dims[1:])) / 1e6
    m = _CNN.match(arch)
    if m:
        ch, k, st = (int(g) for g in m.groups())
        out = ((28 - k) // st + 1) ** 2
        return (ch * k * k * out + 10 * ch * out) / 1e6
    raise ValueError(f"not an architecture spec: {arch!r}")


def family(arch: str) -> str:
    return "cnn" if arch.startswith("cnn-") else "mlp"


def _count(n: Any, total: int) -> int:
    return total if str(n) == "all" else int(n)


def job_cost(rule: str, wildcards: Mapping[str, Any], config: Mapping[str, Any]) -> dict:
    """The calibration key and the work and size of one job.

    Args:
        rule: The Snakemake rule (``train``, ``certify``, ``attack``, ``autoattack``, ``curvature``, or a
            rendering rule).
        wildcards: The job's wildcards (``arch``, ``method``, ``epochs``, ``ntrain`` for training; ``model``,
            ``certifier``/``attack``, ``targets``, ``ntest`` for the others).
        config: The resolved experiment config (``training.{method}.pgd_steps``, ``dataset``).

    Returns:
        ``{"rule", "kind", "family", "units", "work", "size"}`` (``units``: epochs × images × steps, or test
        points; ``work`` = units × size); all three are 0 for rendering rules.
    """
    if rule not in SCALED_RULES:
        return {"rule": rule, "kind": rule, "family": "-", "units": 0, "work": 0.0, "size": 0.0}
    n_train, n_test = DATASET_SIZES.get(config.get("dataset", "mnist"), DATASET_SIZES["mnist"])
    if rule == "train":
        arch, kind = wildcards["arch"], wildcards["method"]
        steps = (config.get("training", {}).get(kind, {}).get("pgd_steps", 0) + 1) if kind in ("pgd", "trades") \
            else 1
        units = int(wildcards["epochs"]) * _count(wildcards["ntrain"], n_train) * steps
    else:
        arch = str(wildcards["model"]).split("/")[0]
        units = _count(wildcards["ntest"], n_test)
        if rule == "curvature":
            kind = "K"
        elif rule == "autoattack":
            kind = f"autoattack-{wildcards.get('targets', 'all')}"
        else:
            kind = f"{wildcards['certifier' if rule == 'certify' else 'attack']}-{wildcards['targets']}"
    size = arch_size(arch)
    return {"rule": rule, "kind": kind, "family": family(arch), "units": units, "work": units * size, "size": size}


# ------------------------------------------------------------------------------------------- calibration


def benchmark_jobs(results: str | Path) -> list[dict]:
    """Every ``benchmark:`` record of a results folder with its job's wildcards: ``{"rule", "path", "s",
    "max_rss", "wildcards"}`` (``max_rss`` in MB, ``s`` wall seconds; the first line of each record)."""
    results = Path(results)
    out = []
    for p in sorted((results / "benchmarks").rglob("*.tsv")):
        rel = p.relative_to(results / "benchmarks").with_suffix("")
        parts = rel.parts
        rule = parts[0]
        with open(p, newline="") as f:
            row = next(csv.DictReader(f, delimiter="\t"))
        s = float(row["s"])
        rss = float(row["max_rss"]) if row.get("max_rss") not in (None, "", "-", "NA") else float("nan")
        wc: dict = {}
        if rule == "train":
            m = _MODEL.match(parts[2])
            wc = {"arch": parts[1], **(m.groupdict() if m else {})}
        elif rule in ("certify", "attack", "curvature"):
            wc = {"model": f"{parts[1]}/{parts[2]}"}
            if rule == "curvature":
                wc["ntest"] = parts[3].removeprefix("K-n")
            else:
                m = _RECORD.match(parts[3])
                if m:
                    wc.update(m.groupdict())
                    if rule == "attack" and m["kind"] == "autoattack":
                        rule = "autoattack"
                    else:
                        wc["certifier" if rule == "certify" else "attack"] = m["kind"]
        out.append({"rule": rule, "path": str(rel), "s": s, "max_rss": rss, "wildcards": wc})
    return out


def _profile(points: list[tuple[float, float]]) -> list[list[float]]:
    """The memory profile of a key: at each measured size its largest peak, made non-decreasing in size, as
    ``[[size, mb], ...]`` (:func:`_interpolate` reads it)."""
    by_x: dict = {}
    for x, y in points:
        by_x[x] = max(by_x.get(x, 0.0), y)
    out, top = [], 0.0
    for x in sorted(by_x):
        top = max(top, by_x[x])
        out.append([x, _round_up(top)])
    return out


def _interpolate(profile: list, z: float) -> float:
    """A memory profile at size ``z``: its first value below the smallest measured size, linear between measured
    sizes, and beyond the largest along the steepest of its segments (so never below a measured peak of a smaller
    or equal size)."""
    xs = [p[0] for p in profile]
    ys = [p[1] for p in profile]
    if z <= xs[0]:
        return ys[0]
    for (x0, y0), (x1, y1) in zip(profile, profile[1:]):
        if z <= x1:
            return y0 + (y1 - y0) * (z - x0) / (x1 - x0)
    slope = max([(y1 - y0) / (x1 - x0) for (x0, y0), (x1, y1) in zip(profile, profile[1:])] + [0.0])
    return ys[-1] + slope * (z - xs[-1])


def calibrate(measured: str | Path, small: tuple = ()) -> dict:
    """Fit the resource model to the benchmark records of a measured results folder (the quick profile: full-width
    nets) and of folders of small nets (the smoke profile), which anchor the memory profiles at the small end
    (see the module docstring). Run times are fitted on ``measured``: a small net's job is dominated by costs that
    do not grow with its size (loading data, evaluating the test set, an attack's iterations), which say nothing
    about its work, and the :data:`RUNTIME_FLOOR_MIN` covers it. Only a kind that ``measured`` lacks (AutoAttack
    until the quick profile has run it) takes its run time from the small folders, per unit (test point) whatever
    the size: ``a_unit``, the largest seconds per unit beyond ``s0`` (an attack's cost per point is its iterations'
    overhead on small nets; the headline's 2×1024 nets measured about 1 s per point per core, as the 16-unit ones).

    Returns:
        ``{"source", "records", "safety", "s0", "keys": {"rule/kind/family": {...}}, "fixed": {rule: {...}}}``;
        ``s0`` is the measured run's shortest job (seconds, the startup floor); each key holds ``n`` records, the
        run-time slope ``a`` (seconds per unit of work beyond ``s0``, the largest among its records), the memory
        profile ``mem`` (MB against size, over its records and the small folders', :func:`_profile`), and the
        measured ``peak_s`` and ``peak_mb``; a key measured only in the small folders holds ``a_unit`` instead of
        ``a`` and ``small_only: true``; each rendering rule its ``peak_s`` and ``peak_mb``.
    """
    keys: dict = {}
    small_keys: dict = {}
    fixed: dict = {}
    mem_points: dict = {}
    sources, n, s0 = [], 0, None
    for i, results in enumerate(map(Path, (measured, *small))):
        plan = json.loads((results / "plan.json").read_text())
        jobs = [j for j in benchmark_jobs(results) if not math.isnan(j["max_rss"])]
        if not jobs:
            raise ValueError(f"{results}: no benchmark records")
        sources.append(f"{results.as_posix()}/benchmarks ({len(jobs)} records{', small nets' if i else ''})")
        n += len(jobs)
        if i == 0:
            s0 = min(j["s"] for j in jobs)
        for j in jobs:
            if j["rule"] not in SCALED_RULES:
                f = fixed.setdefault(j["rule"], {"n": 0, "peak_s": 0.0, "peak_mb": 0.0})
                f["n"] += 1
                f["peak_mb"] = max(f["peak_mb"], j["max_rss"])
                f["peak_s"] = max(f["peak_s"], j["s"])  # a rendering job's cost does not grow with the budget
                continue
            c = job_cost(j["rule"], j["wildcards"], plan["config"])
            key = f"{c['rule']}/{c['kind']}/{c['family']}"
            mem_points.setdefault(key, []).append((c["size"], j["max_rss"]))
            if i == 0:
                k = keys.setdefault(key, {"n": 0, "a": 0.0, "peak_s": 0.0, "peak_mb": 0.0})
                k["n"] += 1
                k["a"] = max(k["a"], (j["s"] - s0) / c["work"])
            else:
                k = small_keys.setdefault(key, {"n": 0, "a_unit": 0.0, "peak_s": 0.0, "peak_mb": 0.0,
                                                "small_only": True})
                k["n"] += 1
                k["a_unit"] = max(k["a_unit"], (j["s"] - s0) / c["units"])
            k["peak_s"] = max(k["peak_s"], j["s"])
            k["peak_mb"] = max(k["peak_mb"], j["max_rss"])
    for key, k in keys.items():
        k.update(a=_round_up(k["a"]), mem=_profile(mem_points[key]))
    for key, k in small_keys.items():
        if key not in keys:
            keys[key] = {**k, "a_unit": _round_up(k["a_unit"]), "mem": _profile(mem_points[key])}
    return {"source": "; ".join(sources), "records": n, "safety": SAFETY, "s0": s0,
            "keys": dict(sorted(keys.items())), "fixed": dict(sorted(fixed.items()))}


def _round_up(x: float, digits: int = 4) -> float:
    """``x`` rounded up to ``digits`` significant digits (a coefficient written to JSON never shrinks)."""
    if x <= 0:
        return 0.0
    e = math.floor(math.log10(x)) - digits + 1
    return float(f"{math.ceil(x / 10 ** e) * 10 ** e:.{digits}g}")


def load_calibration(path: str | Path) -> dict:
    return json.loads(Path(path).read_text())


def _keys_of(cal: Mapping, cost: Mapping) -> list[dict]:
    """The calibration key of a job, or the keys of the fallbacks of the module docstring (the largest of them
    applies) for a key without records."""
    keys = cal["keys"]
    exact = keys.get(f"{cost['rule']}/{cost['kind']}/{cost['family']}")
    if exact:
        return [exact]
    for prefix, fam in ((f"{cost['rule']}/", cost["family"]), (f"{cost['rule']}/", None),
                        ("attack/" if cost["rule"] == "autoattack" else None, None)):
        if prefix is None:
            continue
        match = [v for k, v in keys.items() if k.startswith(prefix) and (fam is None or k.endswith(f"/{fam}"))]
        if match:
            return match
    raise KeyError(f"no calibration for rule {cost['rule']!r}")


def request(cal: Mapping, rule: str, wildcards: Mapping[str, Any], config: Mapping[str, Any], gpu: int = 0,
            attempt: int = 1) -> dict:
    """What one job asks the scheduler for.

    Args:
        cal: The calibration (:func:`load_calibration` of ``workflow/resources.json``).
        rule, wildcards, config: As for :func:`job_cost`.
        gpu: GPUs the job holds (adds :data:`GPU_HOST_MB`).
        attempt: Snakemake's attempt counter (1 on the first try); multiplies memory and run time.

    Returns:
        ``{"mem_mb": int, "runtime": int}`` (run time in minutes, as Snakemake's ``runtime`` resource).
    """
    cost = job_cost(rule, wildcards, config)
    if rule in SCALED_RULES:
        keys = _keys_of(cal, cost)
        seconds = cal["s0"] + max(k["a"] * cost["work"] if "a" in k else k["a_unit"] * cost["units"] for k in keys)
        mb = max(_interpolate(k["mem"], cost["size"]) for k in keys)
    else:
        f = cal["fixed"].get(rule) or {"peak_s": max(v["peak_s"] for v in cal["fixed"].values()),
                                       "peak_mb": max(v["peak_mb"] for v in cal["fixed"].values())}
        seconds, mb = f["peak_s"], f["peak_mb"]
    runtime = max(RUNTIME_FLOOR_MIN, math.ceil(SAFETY * seconds / 60))
    mem = max(MEM_FLOOR_MB, math.ceil(SAFETY * mb)) + (GPU_HOST_MB if gpu else 0)
    return {"mem_mb": int(mem * attempt), "runtime": int(runtime * attempt)}


# ------------------------------------------------------------------------------------------- plan tables


def plan_jobs(config: Mapping[str, Any]) -> list[tuple[str, dict]]:
    """(rule, wildcards) of every job of a config's DAG (from :func:`sorobust.workflow.build_plan`)."""
    from .workflow import build_plan

    P = build_plan(dict(config))
    jobs: list[tuple[str, dict]] = [("data", {}), ("plan", {}), ("manifest", {})]
    for model in sorted(P.models):
        arch, rest = model.split("/")
        jobs.append(("train", {"arch": arch, **_MODEL.match(rest).groupdict()}))
    for rec in sorted(P.records):
        parts = Path(rec).with_suffix("").parts
        wc: dict = {"model": f"{parts[1]}/{parts[2]}"}
        if parts[0] == "curvature":
            jobs.append(("curvature", {**wc, "ntest": parts[3].removeprefix("K-n")}))
            continue
        m = _RECORD.match(parts[3]).groupdict()
        wc.update(m)
        if parts[0] == "attack" and m["kind"] == "autoattack":
            jobs.append(("autoattack", wc))
        else:
            wc["certifier" if parts[0] == "certify" else "attack"] = m["kind"]
            jobs.append((parts[0], wc))
    jobs += [("table", {"table": t}) for t in sorted(P.tables)]
    jobs += [("figure", {"figure": f}) for f in sorted(P.figures)]
    return jobs


#: the environment variable that lets a GPU profile run on a machine without a GPU anyway
ALLOW_CPU_ENV = "SOROBUST_ALLOW_CPU"
#: the CPU profiles a user is pointed to, smallest first: (config file, what it costs on 2 cores)
CPU_PROFILES = (("config/smoke.yaml", "every table and figure from tiny nets, minutes"),
                ("config/quick.yaml", "1-epoch models of the paper's nets, about 3 h"),
                ("config/paper_cpu.yaml", "depth 2 and the conv net at the paper's budget, days"))


def cpu_guard(config: Mapping[str, Any], cal: Mapping, cuda_available: bool | None = None,
              environ: Mapping[str, str] | None = None) -> str | None:
    """Why a profile should not start here, or ``None``: a profile meant for a GPU (``device: auto`` or ``cuda``)
    about to run its jobs on this machine, which has none (issue 12: a bare ``snakemake`` must not silently start
    days of CPU training). The message says what the profile costs (its jobs, their count of trainings and the run
    time :func:`request` gives them, i.e. twice the quick profile's measured CPU speed scaled to the budget) and how
    to choose a CPU profile or go ahead anyway (``SOROBUST_ALLOW_CPU=1``). The workflow asks this before it runs
    anything locally (``onstart``; a dry run and the SLURM executor, whose jobs run on GPU nodes, are not asked)."""
    environ = os.environ if environ is None else environ
    if config.get("device", "auto") == "cpu" or environ.get(ALLOW_CPU_ENV, "") not in ("", "0"):
        return None
    if cuda_available is None:
        import torch

        cuda_available = torch.cuda.is_available()
    if cuda_available:
        return None
    jobs = plan_jobs(config)
    minutes = sum(request(cal, rule, wc, config)["runtime"] for rule, wc in jobs) / SAFETY
    trains = [wc for rule, wc in jobs if rule == "train"]
    epochs = sorted({int(wc["epochs"]) for wc in trains})
    choices = "; ".join(f"--configfile {f} ({what})" for f, what in CPU_PROFILES)
    return (f"profile '{config.get('name')}' (device: {config.get('device', 'auto')}) is meant for a GPU, and this "
            f"machine has none: its {len(jobs)} jobs include {len(trains)} trainings of "
            f"{epochs[0] if epochs else 0}-{epochs[-1] if epochs else 0} epochs, about {minutes / 60:.0f} hours at "
            f"the measured CPU speed of 2 cores. Choose a CPU profile: {choices}; or run this one on CPU anyway "
            f"with {ALLOW_CPU_ENV}=1")


def _fmt_min(minutes: float) -> str:
    return f"{minutes / 60:.1f} h" if minutes >= 120 else f"{minutes:.0f} min"


def _fmt_mb(mb: float) -> str:
    return f"{mb / 1024:.1f} GB"


#: CPUs per job (cpus_per_task = the rule's `threads:`; workflow/rules/train.smk asks 2, every other rule 1)
THREADS = {"train": 2}
RULE_ORDER = ("data", "plan", "train", "certify", "attack", "autoattack", "curvature", "table", "figure", "manifest")


def table(cal: Mapping, config: Mapping[str, Any], measured: Optional[str | Path] = None, gpu: int = 1,
          measured_config: Optional[Mapping[str, Any]] = None) -> str:
    """Markdown table, one row per rule: the jobs of ``config`` and the largest memory and run time they request
    (with ``gpu`` GPUs on the scaled rules) and their total; beside them, when ``measured`` is a results folder,
    its jobs' requests (CPU, no GPU) and the peaks its ``benchmark:`` records measured."""
    by_rule: dict = {}
    for rule, wc in plan_jobs(config):
        g = gpu if rule in GPU_RULES else 0
        r = request(cal, rule, wc, config, gpu=g)
        d = by_rule.setdefault(rule, {"n": 0, "mem": 0, "rt": 0, "total": 0, "gpu": g})
        d["n"] += 1
        d["mem"], d["rt"] = max(d["mem"], r["mem_mb"]), max(d["rt"], r["runtime"])
        d["total"] += r["runtime"]
    meas: dict = {}
    if measured is not None:
        mconf = measured_config or json.loads((Path(measured) / "plan.json").read_text())["config"]
        for j in benchmark_jobs(measured):
            r = request(cal, j["rule"], j["wildcards"], mconf, gpu=0)
            d = meas.setdefault(j["rule"], {"n": 0, "s": 0.0, "rss": 0.0, "mem": 0, "rt": 0, "ratio_s": math.inf,
                                            "ratio_m": math.inf})
            d["n"] += 1
            d["s"], d["rss"] = max(d["s"], j["s"]), max(d["rss"], j["max_rss"])
            d["mem"], d["rt"] = max(d["mem"], r["mem_mb"]), max(d["rt"], r["runtime"])
            d["ratio_s"] = min(d["ratio_s"], r["runtime"] * 60 / j["s"])
            d["ratio_m"] = min(d["ratio_m"], r["mem_mb"] / j["max_rss"])
    head = (f"| rule | {config.get('name', '?')}: jobs | GPUs / CPUs per job | mem_mb (max) | runtime (max) | "
            f"hours requested (sum) |")
    sep = "|---|---:|---:|---:|---:|---:|"
    if meas:
        mname = Path(measured).name
        head += (f" {mname}: jobs measured | {mname}: requested mem / runtime (max) | {mname}: measured peak RSS / "
                 f"wall (max) | least request ÷ use (mem / time) |")
        sep += "---:|---:|---:|---:|"
    lines = [head, sep]
    for rule in RULE_ORDER:
        d = by_rule.get(rule)
        if d is None and rule not in meas:
            continue
        d = d or {"n": 0, "mem": 0, "rt": 0, "total": 0, "gpu": 0}
        row = (f"| {rule} | {d['n']} | {d['gpu']} / {THREADS.get(rule, 1)} | {d['mem']} | {_fmt_min(d['rt'])} | "
               f"{d['total'] / 60:.1f} |")
        if meas:
            m = meas.get(rule)
            row += (f" {m['n']} | {_fmt_mb(m['mem'])} / {_fmt_min(m['rt'])} | {_fmt_mb(m['rss'])} / {m['s']:.0f} s | "
                    f"{m['ratio_m']:.1f}× / {m['ratio_s']:.1f}× |" if m else " 0 | – | – | – |")
        lines.append(row)
    n = sum(d["n"] for d in by_rule.values())
    gpu_h = sum(d["total"] for d in by_rule.values() if d["gpu"]) / 60
    lines.append(f"| **all** | **{n}** | | | | **{sum(d['total'] for d in by_rule.values()) / 60:.0f}** "
                 f"({gpu_h:.0f} on GPUs) |" + (" | | | |" if meas else ""))
    return "\n".join(lines) + "\n"


def main(argv: Optional[list[str]] = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m sorobust.resources", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("calibrate", help="fit workflow/resources.json to a results folder's benchmark records")
    c.add_argument("results", nargs="?", default="results/quick")
    c.add_argument("--small", nargs="*", default=["results/smoke"],
                   help="folders of small nets (memory; run time of kinds the first lacks)")
    c.add_argument("--out", default="workflow/resources.json")
    t = sub.add_parser("table", help="Markdown table of a config's requests beside a measured folder's peaks")
    t.add_argument("--config", default="config/config.yaml")
    t.add_argument("--measured", default="results/quick")
    t.add_argument("--calibration", default="workflow/resources.json")
    t.add_argument("--gpu", type=int, default=1, help="GPUs per scaled job (0 for a CPU profile)")
    args = ap.parse_args(argv)
    if args.cmd == "calibrate":
        cal = calibrate(args.results, tuple(args.small))
        Path(args.out).write_text(json.dumps(cal, indent=1, sort_keys=True) + "\n")
        print(f"{args.out}: {len(cal['keys'])} keys, {len(cal['fixed'])} rendering rules from {cal['records']} "
              f"records: {cal['source']}")
        return 0
    from .workflow import derive_config, is_derived, load_yaml

    config = load_yaml(Path(args.config).read_text(), args.config)
    if is_derived(config):
        config = derive_config(config, Path.cwd())
    print(table(load_calibration(args.calibration), config, args.measured or None, gpu=args.gpu), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
