"""The ``sorobust`` command line: train, certify, attack.

Every command has ``--help``. Bad input stops with one line (``error: …``) and exit status 2. Results are
written atomically: a per-point TSV and a JSON summary with a provenance record beside it. Long runs show a
progress bar and resume after an interruption: finished batches are kept in ``OUT.partial`` and skipped on the
next run with the same options; ``train`` checkpoints every epoch to ``OUT.partial`` and resumes from it, and
writes ``OUT`` only when training is complete.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from . import __version__, runner, summaries
from . import vocab as V
from .errors import SorobustError

CERTIFY_COLUMNS = ["idx", "label", "pred", "correct", "target", "certificate", "exact", "eta",
                   "residual", "iterations", "time_s", "certificate_reference", "converged", "f", "m", "M"]
ATTACK_COLUMNS = ["idx", "label", "pred", "correct", "target", "pred_adv", "distance", "f", "success", "robust",
                  "robust_reference", "dual_bound", "time_s"]


def _add_common(p: argparse.ArgumentParser):
    p.add_argument("--checkpoint", required=True, help="model file written by `sorobust train` (or a reference "
                                                       "state dict together with --arch)")
    p.add_argument("--arch", default=None, help="architecture of a plain state dict, e.g. mlp-2x1024-softplus")
    p.add_argument("--dataset", default="mnist", choices=V.values(V.Dataset))
    p.add_argument("--split", default="test", choices=V.values(V.Split))
    p.add_argument("--data-dir", default=None, help="data directory (default: $SOROBUST_DATA_DIR, else ./data)")
    p.add_argument("--limit", type=int, default=None, help="first N points of the split (default: all)")
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--dtype", default="float32", choices=V.values(V.DType))
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 … (default: cuda if available)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.add_argument("--out", required=True, help="per-point records (.tsv); the summary goes to the .json beside it")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sorobust", description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", action="version", version=f"sorobust {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a model (standard, gamma, crt, pgd, trades, crown-ibp, coap)",
                       description="Train a model; defaults are the reference code's (Adam, lr 1e-3, batch 64, "
                                   "30 epochs, seed 1, rho 1.58), and for crown-ibp / coap their own papers' "
                                   "(lr 5e-4, batch 256, 100 epochs / lr 1e-3, batch 50, 60 epochs). Rerunning "
                                   "with the same --out resumes.")
    t.add_argument("--arch", required=True, help="mlp or cnn (with --depth/--width/--activation …) or a full "
                                                 "spec such as mlp-2x1024-softplus, cnn-5c3k1s-tanh")
    t.add_argument("--depth", type=int, default=2, help="MLP: number of linear layers (paper's L)")
    t.add_argument("--width", type=int, default=1024, help="MLP hidden width")
    t.add_argument("--activation", default="softplus", help="sigmoid, tanh, softplus or relu")
    t.add_argument("--channels", type=int, default=5, help="CNN filters")
    t.add_argument("--kernel", type=int, default=3, help="CNN kernel size")
    t.add_argument("--stride", type=int, default=1, help="CNN stride")
    t.add_argument("--method", default="standard",
                   choices=V.values(V.TrainMethod))
    t.add_argument("--gamma", type=float, default=0.0, help="weight of the curvature penalty gamma*K (Theorem 4)")
    t.add_argument("--rho", type=float, default=1.58, help="training radius for crt, pgd and trades")
    t.add_argument("--attack", default="kkt", choices=V.values(V.CRTAttack),
                   help="CRT attack solver: kkt (default, fast) or mm (reference, 30x10 steps)")
    t.add_argument("--pgd-steps", type=int, default=10, help="PGD/TRADES inner steps")
    t.add_argument("--trades-beta", type=float, default=6.0)
    t.add_argument("--selection", default="last", choices=V.values(V.Selection),
                   help="last epoch (default), best on a held-out validation split, or best on the test set "
                        "(the reference's choice, labelled)")
    t.add_argument("--val-size", type=int, default=5000)
    t.add_argument("--dataset", default="mnist", choices=V.values(V.Dataset))
    t.add_argument("--data-dir", default=None)
    t.add_argument("--epochs", type=int, default=None, help="default 30 (crown-ibp 100, coap 60)")
    t.add_argument("--batch-size", type=int, default=None, help="default 64 (crown-ibp 256, coap 50)")
    t.add_argument("--lr", type=float, default=None, help="Adam learning rate, default 1e-3 (crown-ibp 5e-4)")
    t.add_argument("--schedule-start", type=int, default=None,
                   help="crown-ibp/coap: epochs before the eps ramp (default 1 / 0)")
    t.add_argument("--schedule-length", type=int, default=None,
                   help="crown-ibp/coap: epochs of the eps ramp to rho (default 61 / 20)")
    t.add_argument("--final-beta", type=float, default=0.0, help="crown-ibp: final weight of the CROWN-IBP bound")
    t.add_argument("--final-kappa", type=float, default=0.5, help="crown-ibp: final weight of the natural loss")
    t.add_argument("--starting-epsilon", type=float, default=0.01, help="coap: first epoch's eps")
    t.add_argument("--proj", type=int, default=50,
                   help="coap: random projections of the l2 bound in training (0 = exact bound)")
    t.add_argument("--lr-decay-step", type=int, default=None,
                   help="halve the lr every N epochs after the ramp (default 10 for crown-ibp/coap, else off)")
    t.add_argument("--seed", type=int, default=1)
    t.add_argument("--limit", type=int, default=None, help="first N training (and test) points")
    t.add_argument("--threads", type=int, default=None)
    t.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 … (default: cuda if available)")
    t.add_argument("--no-progress", action="store_true")
    t.add_argument("--out", required=True, help="checkpoint path (.pt); a summary .json goes beside it")

    c = sub.add_parser("certify", help="certify test points (CRC, or CROWN/IBP/CROWN-IBP/COAP/CNN-Cert)",
                       description="Certify points with the Curvature-based Robustness Certificate.")
    _add_common(c)
    c.add_argument("--rho", type=float, action="append", default=None,
                   help="report the certified accuracy at this radius in the summary (repeatable; the records hold "
                        "each point's certificate, valid for every radius)")
    c.add_argument("--method", default="crc", choices=V.values(V.CertifyMethod),
                   help="crc (this paper), or a baseline: linear relaxations (cnn-cert = CROWN on the unrolled "
                        "conv) or coap (exact l2 dual bound of convex_adversarial; relu nets)")
    c.add_argument("--curvature", default="global", choices=V.values(V.Curvature))
    c.add_argument("--targets", default="all", choices=V.values(V.Targets),
                   help="all wrong classes (sound, default), the runner-up only (reference protocol), or a "
                        "random wrong class (CNN-Cert's protocol; baselines only)")
    c.add_argument("--steps", type=int, default=20, help="baselines: bisection steps for the certified radius")
    c.add_argument("--solver", default="kkt", choices=V.values(V.Solver),
                   help="kkt: fast default; newton: slides' HVP Newton; mm: reference majorisation-minimisation")

    a = sub.add_parser("attack", help="attack test points (second-order attack, PGD-L2 or AutoAttack-L2)",
                       description="Run the curvature-based attack (Definition 2), PGD-L2, or AutoAttack in L2 "
                                   "(Croce & Hein 2020, the pyautoattack package; all-class, in the box [0, 1]; "
                                   "its successes re-verified in float64).")
    _add_common(a)
    a.add_argument("--rho", type=float, required=True, help="attack radius ρ (ℓ2, pixel units in [0,1])")
    a.add_argument("--method", default="pgd", choices=V.values(V.Attack))
    a.add_argument("--targets", default=None, choices=V.values(V.WORKFLOW_TARGETS),
                   help="runner-up (the reference's protocol; default of pgd and second-order) or all wrong "
                        "classes (the only choice of autoattack)")
    a.add_argument("--aa-version", default="standard", choices=V.values(V.AAVersion),
                   help="autoattack: standard (APGD-CE, APGD-T, FAB-T, Square) or apgd (APGD-CE and APGD-T only)")
    a.add_argument("--steps", type=int, default=None, help="PGD steps (default int(200 ρ), the reference)")
    a.add_argument("--step-size", type=float, default=0.01, help="PGD step (default 0.01, the reference)")
    k = sub.add_parser("curvature", help="curvature bounds K_ub (Theorem 4) and Hessian norms K_lb at test points",
                       description="Per (point, target): Theorem 4's bound K(W, y, t) and the spectral norm of the "
                                   "closed-form Hessian (Lemma 1) of z_y - z_t at the point (the figure's K_ub, K_lb).")
    _add_common(k)

    dt = sub.add_parser("data", help="fetch (torchvision) or locate a dataset and record its checksums",
                        description="Make sure the dataset's raw files are present (downloading through "
                                    "torchvision where the internet exists), load both splits, and write their "
                                    "sha256 and sizes to OUT (JSON).")
    dt.add_argument("--dataset", default="mnist", choices=V.values(V.Dataset))
    dt.add_argument("--data-dir", default=None, help="data directory (default: $SOROBUST_DATA_DIR, else ./data)")
    dt.add_argument("--out", required=True)

    pl = sub.add_parser("plan", help="write the experiment plan of a workflow config (plan.json)",
                        description="Resolve a validated workflow config into the plan every rule reads.")
    pl.add_argument("--config-json", required=True, help="the resolved config as JSON (a file or a JSON string)")
    pl.add_argument("--out", required=True)

    tb = sub.add_parser("table", help="render a paper table from per-point records",
                        description="Render TABLE as CSV, Markdown and LaTeX (+ .meta.json) under RESULTS/tables.")
    tb.add_argument("name", help="table1, table2, table3, table4, table5, iclr_table3 or protocol")
    tb.add_argument("--plan", required=True, help="plan.json of the results folder")
    tb.add_argument("--results", required=True, help="results folder (results/{profile})")
    tb.add_argument("--published", default=None, help="published numbers (config/published.tsv)")

    fg = sub.add_parser("figure", help="draw a paper figure from per-point records",
                        description="Draw FIGURE as PNG and PDF (+ .meta.json) under RESULTS/figures.")
    fg.add_argument("name", help="curvature or certified_vs_radius")
    fg.add_argument("--plan", required=True)
    fg.add_argument("--results", required=True)

    mf = sub.add_parser("manifest", help="write RESULTS/MANIFEST.tsv (sha256 of every artifact)",
                        description="List every artifact of a results folder with its sha256 in MANIFEST.tsv.")
    mf.add_argument("results")

    au = sub.add_parser("audit", help="check a results folder: hashes, provenance schemas, tables vs records",
                        description="Exit 1 with one line per discrepancy: manifest hashes, provenance records "
                                    "against their schema, every table re-aggregated from its per-point records.")
    au.add_argument("results")
    au.add_argument("--published", default=None, help="published numbers to use (default: the one recorded)")

    cp = sub.add_parser("compare", help="compare the tables of two results folders under a tolerance",
                        description="Exit 1 when a table cell of A differs from B beyond the tolerance (README).")
    cp.add_argument("a")
    cp.add_argument("b")
    cp.add_argument("--pct-points", type=float, default=None,
                    help="tolerance of percentage cells in points (default: two test points, 200/n)")
    cp.add_argument("--rel", type=float, default=0.10, help="relative tolerance of other numeric cells")
    return parser


def _summary_common(args, rows, t_total, extra):
    """The summary of a certify/attack run: :mod:`sorobust.summaries` (which the audit recomputes) and ``extra``."""
    if args.command == "certify":
        return {**summaries.common(rows, t_total), **summaries.certified(rows, args.rho), **extra}
    return {**summaries.common(rows, t_total, args.rho), **extra}


def cmd_certify(args) -> dict:
    if args.method != "crc":
        return _certify_baseline(args)
    from . import curvature
    from .certify import crc

    model, X, y = runner.load_inputs(args)
    if args.targets == "random":
        raise SorobustError("--targets random is CNN-Cert's protocol for the baselines; CRC takes all or runner-up")
    t_start = time.perf_counter()
    cb = curvature.CurvatureBounds(model)
    t_b = time.perf_counter()
    if args.targets == "all":
        cb.all_pairs()
    bounds_time = time.perf_counter() - t_b

    def fn(i, xb, yb):
        res = crc(model, xb, yb, targets=args.targets, curvature=args.curvature, solver=args.solver,
                  bounds_cache=cb)
        with torch.no_grad():
            pred = model(xb).argmax(1)
        correct = pred == yb
        per = res.time_s / len(yb)
        return [{"idx": i + j, "label": int(yb[j]), "pred": int(pred[j]), "correct": bool(correct[j]),
                 "target": int(res.target[j]), "certificate": float(res.certificate[j]),
                 "exact": bool(res.exact[j]), "eta": float(res.eta[j]),
                 "residual": float(res.residual[j]), "iterations": int(res.iterations[j]), "time_s": per,
                 "certificate_reference": float(res.certificate_reference[j]),
                 "converged": bool(res.converged[j]), "f": float(res.f[j]), "m": float(res.m[j]),
                 "M": float(res.M[j])} for j in range(len(yb))]

    keys = ["checkpoint", "arch", "dataset", "split", "rho", "limit", "batch_size", "dtype", "curvature",
            "targets", "solver", "method"]
    rows, partial, partial_meta = runner.run_batches(args, X, y, fn, CERTIFY_COLUMNS, keys)
    t_total = time.perf_counter() - t_start
    summary = _summary_common(args, rows, t_total, {
        **summaries.crc(rows),
        "bounds_time_s": bounds_time,
        "protocol": {"method": "crc", "targets": args.targets, "curvature": args.curvature,
                     "solver": args.solver, "sound": args.targets == "all",
                     "certified_rule": "correct and certificate > rho and converged"},
    })
    runner.finish(args, rows, CERTIFY_COLUMNS, summary, keys, partial, partial_meta, t_total)
    return summary


def _certify_baseline(args) -> dict:
    """CROWN / IBP / CROWN-IBP / COAP / CNN-Cert certified radii, in the CRC record format."""
    from .certify import radius_function

    model, X, y = runner.load_inputs(args)
    radius = radius_function(args.method)
    if args.method == "cnn-cert" and model.kind != "cnn":
        raise SorobustError("--method cnn-cert needs a conv net checkpoint (cnn-...); use crown for MLPs")
    gen = torch.Generator().manual_seed(args.seed)
    t_start = time.perf_counter()

    def fn(i, xb, yb):
        res = radius(model, xb, yb, targets=args.targets, steps=args.steps, generator=gen)
        with torch.no_grad():
            pred = model(xb).argmax(1)
        correct = pred == yb
        per = res["time_s"] / len(yb)
        return [{"idx": i + j, "label": int(yb[j]), "pred": int(pred[j]), "correct": bool(correct[j]),
                 "target": int(res["target"][j]), "certificate": float(res["radius"][j]), "exact": None, "eta": None,
                 "residual": None, "iterations": args.steps, "time_s": per, "certificate_reference": None,
                 "converged": True, "f": None, "m": None, "M": None} for j in range(len(yb))]

    keys = ["checkpoint", "arch", "dataset", "split", "rho", "limit", "batch_size", "dtype", "targets", "method",
            "steps", "seed"]
    rows, partial, partial_meta = runner.run_batches(args, X, y, fn, CERTIFY_COLUMNS, keys)
    t_total = time.perf_counter() - t_start
    summary = _summary_common(args, rows, t_total, {
        "protocol": {"method": args.method, "targets": args.targets, "bisection_steps": args.steps,
                     "sound": args.targets == "all", "certified_rule": "correct and radius > rho"},
    })
    runner.finish(args, rows, CERTIFY_COLUMNS, summary, keys, partial, partial_meta, t_total)
    return summary


def cmd_attack(args) -> dict:
    from . import attacks

    model, X, y = runner.load_inputs(args)
    t_start = time.perf_counter()
    gen = torch.Generator().manual_seed(args.seed)
    cb = None
    if args.method == "second-order":
        from . import curvature

        cb = curvature.CurvatureBounds(model)

    def fn(i, xb, yb):
        t0 = time.perf_counter()
        with torch.no_grad():
            pred = model(xb).argmax(1)
        if args.method == "pgd":
            res = attacks.pgd_l2(model, xb, yb, args.rho, targets=args.targets, steps=args.steps,
                                 step_size=args.step_size, generator=gen)
        elif args.method == "autoattack":
            res = attacks.autoattack_l2(model, xb, yb, args.rho, version=args.aa_version, seed=args.seed + i,
                                        in_shape=tuple(getattr(model, "in_shape", (1, 28, 28))),
                                        batch_size=len(yb))
        else:
            res = attacks.second_order(model, xb, yb, args.rho, targets=args.targets, bounds_cache=cb)
        per = (time.perf_counter() - t0) / len(yb)
        correct = pred == yb
        return [{"idx": i + j, "label": int(yb[j]), "pred": int(pred[j]), "correct": bool(correct[j]),
                 "target": int(res.target[j]), "pred_adv": int(res.pred[j]), "distance": float(res.distance[j]),
                 "f": float(res.f[j]), "success": bool(res.success[j]),
                 "robust": bool(correct[j] and res.robust[j]),
                 "robust_reference": bool(correct[j] and res.robust_reference[j]),
                 "dual_bound": None if res.dual_bound is None else float(res.dual_bound[j]), "time_s": per}
                for j in range(len(yb))]

    keys = ["checkpoint", "arch", "dataset", "split", "rho", "limit", "batch_size", "dtype", "method", "targets",
            "steps", "step_size", "seed"] + (["aa_version"] if args.method == "autoattack" else [])
    rows, partial, partial_meta = runner.run_batches(args, X, y, fn, ATTACK_COLUMNS, keys)
    t_total = time.perf_counter() - t_start
    summary = _summary_common(args, rows, t_total, {
        **summaries.attack(rows),
        "protocol": _attack_protocol(args),
    })
    runner.finish(args, rows, ATTACK_COLUMNS, summary, keys, partial, partial_meta, t_total)
    return summary


def _attack_protocol(args) -> dict:
    """What an attack record's numbers mean: the attack, its targets, its budget and when a point counts broken."""
    if args.method == "autoattack":
        return {"method": "autoattack", "version": args.aa_version, "targets": "all", "norm": "L2",
                "box": [0.0, 1.0], "package": "pyautoattack", "reference": "Croce & Hein, ICML 2020 (2003.01690)",
                "success_rule": "float64 prediction != label and float64 ||x_adv - x0|| <= rho"}
    return {"method": args.method, "targets": args.targets,
            "steps": args.steps if args.steps is not None else int(200 * args.rho), "step_size": args.step_size,
            "success_rule": ("float64 ||x*-x0|| = rho (1e-4); robust: float64 prediction at x* = label"
                             if args.method == "second-order" else
                             "float64 prediction != label at x_adv pulled into the ball "
                             "(float64 ||x_adv - x0|| <= rho)")}


def _arch_spec(args) -> str:
    from . import models

    if args.arch == "mlp":
        return models.spec({"kind": "mlp", "depth": args.depth, "width": args.width, "activation": args.activation})
    if args.arch == "cnn":
        return models.spec({"kind": "cnn", "channels": args.channels, "kernel": args.kernel, "stride": args.stride,
                            "activation": args.activation})
    models.parse_spec(args.arch)
    return args.arch


def cmd_train(args) -> dict:
    from .artifacts import provenance, write_json
    from .data import raw_dir
    from .train import TrainConfig, Trainer

    cfg = TrainConfig(arch=_arch_spec(args), dataset=args.dataset, method=args.method, gamma=args.gamma,
                      rho=args.rho, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                      attack=args.attack, pgd_steps=args.pgd_steps, trades_beta=args.trades_beta,
                      selection=args.selection, val_size=args.val_size, limit=args.limit,
                      schedule_start=args.schedule_start, schedule_length=args.schedule_length,
                      final_beta=args.final_beta, final_kappa=args.final_kappa,
                      starting_epsilon=args.starting_epsilon, proj=args.proj, lr_decay_step=args.lr_decay_step)
    t0 = time.perf_counter()
    trainer = Trainer(cfg, data_dir=args.data_dir, device=runner.device(args.device), out=args.out,
                      progress=not args.no_progress)
    data_hash = {"data": raw_dir(args.dataset, args.data_dir)}
    prov = provenance(command="train", config=vars(args).copy(), inputs=data_hash, seeds={"seed": args.seed},
                      timings={})

    def provenance_fn(tr):
        p = dict(prov)
        p["timings"] = {"epoch_seconds": [h["seconds"] for h in tr.history]}
        return p

    model, history = trainer.fit(provenance_fn)
    summary = {"arch": cfg.arch, "method": cfg.method, "gamma": cfg.gamma, "history": history,
               "selected_epoch": trainer.best["epoch"], "selection": cfg.selection,
               "test_accuracy": history[trainer.best["epoch"] - 1]["test_accuracy"]}
    summary["provenance"] = provenance_fn(trainer)
    summary["provenance"]["timings"]["total_s"] = time.perf_counter() - t0
    write_json(Path(args.out).with_suffix(".json"), summary)
    return summary


def cmd_curvature(args) -> dict:
    from . import curvature
    from .certify.crc import runner_up  # noqa: F401  (documented target convention)

    model, X, y = runner.load_inputs(args)
    if not model.activation.smooth:
        raise SorobustError(f"curvature needs a smooth activation; this model uses {model.activation.name}")
    t_start = time.perf_counter()
    n_cls = model.n_classes

    def fn(i, xb, yb):
        ys, ts, k_ub, ev = curvature.bounds_and_hessian_norms(model, xb, yb)
        return [{"idx": i + j // (n_cls - 1), "label": int(ys[j]), "target": int(ts[j]), "K_ub": float(k_ub[j]),
                 "hessian_norm": float(ev[j])} for j in range(len(ys))]

    keys = ["checkpoint", "arch", "dataset", "split", "limit", "batch_size", "dtype"]
    cols = ["idx", "label", "target", "K_ub", "hessian_norm"]
    rows, partial, partial_meta = runner.run_batches(args, X, y, fn, cols, keys)
    t_total = time.perf_counter() - t_start
    summary = {**summaries.curvature(rows), "time_s": t_total}
    runner.finish(args, rows, cols, summary, keys, partial, partial_meta, t_total)
    return summary


def cmd_data(args) -> dict:
    from .artifacts import provenance, sha256_file, write_json
    from .data import load_tensors, raw_dir

    t0 = time.perf_counter()
    sizes = {split: len(load_tensors(args.dataset, split, data_dir=args.data_dir)[1]) for split in ("train", "test")}
    raw = raw_dir(args.dataset, args.data_dir)
    files = {p.name: sha256_file(p) for p in sorted(raw.iterdir()) if p.is_file()}
    summary = {"dataset": args.dataset, "sizes": sizes, "files": files,
               "provenance": provenance(command="sorobust data", config=vars(args).copy(), inputs={"data": raw},
                                        timings={"total_s": time.perf_counter() - t0})}
    write_json(args.out, summary)
    return {k: v for k, v in summary.items() if k != "files"}


def cmd_plan(args) -> dict:
    from .artifacts import atomic_write
    from .workflow import plan_json

    src = args.config_json
    cfg = json.loads(src if src.lstrip().startswith("{") else Path(src).read_text())
    text = plan_json(cfg)
    with atomic_write(args.out) as f:
        f.write(text + "\n")
    plan = json.loads(text)
    return {"profile": plan["profile"], "models": len(plan["models"]), "records": len(plan["records"]),
            "tables": list(plan["tables"]), "figures": list(plan["figures"])}


def cmd_table(args) -> dict:
    from .audit import load_plan, render_table

    meta = render_table(args.name, load_plan(args.plan), args.results, args.published)
    return {"table": args.name, "artifact_version": meta["artifact_version"], "outputs": meta["outputs"]}


def cmd_figure(args) -> dict:
    from .audit import load_plan, render_figure

    meta = render_figure(args.name, load_plan(args.plan), args.results)
    return {"figure": args.name, "artifact_version": meta["artifact_version"], "outputs": meta["outputs"]}


def cmd_manifest(args) -> dict:
    from .audit import write_manifest

    if not Path(args.results).is_dir():
        raise SorobustError(f"results folder '{args.results}' not found")
    path = write_manifest(args.results)
    return {"manifest": str(path), "artifacts": sum(1 for _ in open(path)) - 1}


def _report(problems: list[str], ok: str) -> dict:
    for p in problems:
        print(p, file=sys.stderr)
    if problems:
        raise _Failed(f"{len(problems)} discrepanc{'y' if len(problems) == 1 else 'ies'}")
    return {"result": ok}


class _Failed(Exception):
    pass


def cmd_audit(args) -> dict:
    from .audit import audit

    if not Path(args.results).is_dir():
        raise SorobustError(f"results folder '{args.results}' not found")
    return _report(audit(args.results, args.published), f"{args.results}: audit passed")


def cmd_compare(args) -> dict:
    from .audit import compare_tables

    for d in (args.a, args.b):
        if not Path(d, "tables").is_dir():
            raise SorobustError(f"'{d}' has no tables/ folder; give two results folders")
    return _report(compare_tables(args.a, args.b, args.pct_points, args.rel),
                   f"tables of {args.a} agree with {args.b} within tolerance")


# options that must be finite and positive (> 0) or at least 1, per command; `train --rho`/`--gamma` may be 0
_POSITIVE = ("rho", "lr")
_NONNEG = ("gamma",)
_AT_LEAST_1 = ("limit", "batch_size", "threads", "epochs", "width", "depth", "steps", "n_points")


def check_args(args) -> None:
    """Refuse bad option values before anything is read or written (one line, exit 2; issue 11 item 5), and an
    output path that is also an input path (item 4)."""
    import math

    if args.command == "attack":
        if args.method == "autoattack" and args.targets == "runner-up":
            raise SorobustError("--method autoattack attacks every wrong class; drop --targets runner-up")
        if args.targets is None:
            args.targets = "all" if args.method == "autoattack" else "runner-up"
    for name in _POSITIVE + _NONNEG:
        value = getattr(args, name, None)
        for v in (value if isinstance(value, list) else [] if value is None else [value]):  # certify: --rho list
            low_ok = v >= 0 if (name in _NONNEG or (name == "rho" and args.command == "train")) else v > 0
            if not math.isfinite(v) or not low_ok:
                need = "a finite number ≥ 0" if name in _NONNEG or args.command == "train" else "a finite number > 0"
                raise SorobustError(f"--{name.replace('_', '-')} {v}: must be {need}")
    for name in _AT_LEAST_1:
        v = getattr(args, name, None)
        if v is not None and v < 1:
            raise SorobustError(f"--{name.replace('_', '-')} {v}: must be at least 1")
    out = getattr(args, "out", None)
    if out is None:
        return
    o = Path(out)
    if o.is_dir():
        raise SorobustError(f"--out {out} is a directory; give a file path such as {o / 'out.tsv'}")
    for name in ("checkpoint", "plan", "config_json"):
        src = getattr(args, name, None)
        if src and not str(src).lstrip().startswith("{") and Path(src).resolve() == o.resolve():
            raise SorobustError(f"--out {out} is also the input --{name.replace('_', '-')}; write the output "
                                f"elsewhere")
    parent = o.resolve().parent
    existing = next((q for q in (parent, *parent.parents) if q.exists()), None)
    import os

    if existing is not None and (not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK)):
        raise SorobustError(f"--out {out}: cannot write in {existing} (not a writable directory); choose another "
                            f"output path")


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        check_args(args)
    except SorobustError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)
    try:
        commands = {"train": cmd_train, "certify": cmd_certify, "attack": cmd_attack, "curvature": cmd_curvature,
                    "data": cmd_data, "plan": cmd_plan, "table": cmd_table, "figure": cmd_figure,
                    "manifest": cmd_manifest, "audit": cmd_audit, "compare": cmd_compare}
        summary = commands[args.command](args)
    except SorobustError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except _Failed as e:
        print(f"FAILED: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: rerun the same command to resume", file=sys.stderr)
        return 130
    shown = {k: v for k, v in summary.items() if k not in ("provenance", "history")}
    print(json.dumps(shown, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
