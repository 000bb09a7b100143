"""Benchmark: CROWN certified radius (ℓ2, all-class margins, 20-step bisection precision) on 2, 3 and 4×[1024]
sigmoid MLPs, sorobust's CROWN against ``auto-lirpa==0.3`` in the same run (issue 4).

Both compute the same bound (CROWN's relaxations; auto_LiRPA looks tangent points up on a 0.01 grid, ours
finds them to full precision) at the same points, with all points batched, to the same precision on ε over
[0, 4]: auto_LiRPA by bisection (20 bound evaluations per point), sorobust by its search (sorobust.certify.crown:
fewer full evaluations, printed per point, plus cheap bounds rebuilt from stored bound lines). auto_LiRPA is
imported through the test-side shim ``tests/lirpa_shim.py`` (install: ``pip install --no-deps auto-lirpa==0.3``);
without it only sorobust's time is printed. Radii agree to float32 rounding of the bounds: the two evaluate them
in different orders, which moves a zero of the bound by up to ~1e-4 (tens of the 4e-6 bisection precision).

Usage: python bench/crown.py [--n 10] [--depths 2 3 4] [--train-epochs 1] [--data-dir DIR]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from sorobust import data
from sorobust.certify import crown
from sorobust.train import train_standard


def lirpa_radius(auto_lirpa, net, x, y, steps, eps_max):
    """20-step bisection with auto_LiRPA CROWN, all points batched (per-point ε as a (B, 1) tensor)."""
    B = x.shape[0]
    C_cls = 10
    allc = torch.arange(C_cls).expand(B, C_cls)
    tt = allc[allc != y.reshape(B, 1)].reshape(B, C_cls - 1)
    C = torch.zeros(B, C_cls - 1, C_cls, dtype=x.dtype)
    C.scatter_(2, y.view(B, 1, 1).expand(B, C_cls - 1, 1), 1.0)
    C.scatter_(2, tt.unsqueeze(-1), -1.0)
    bm = auto_lirpa.BoundedModule(net, torch.zeros_like(x[:1]))
    lo, hi = torch.zeros(B, dtype=x.dtype), torch.full((B,), eps_max, dtype=x.dtype)
    for _ in range(steps):
        mid = (lo + hi) / 2
        ptb = auto_lirpa.PerturbationLpNorm(norm=2, eps=mid.view(B, 1))
        lb, _ = bm.compute_bounds(x=(auto_lirpa.BoundedTensor(x, ptb),), C=C, method="CROWN")
        ok = lb.min(1).values > 0
        lo, hi = torch.where(ok, mid, lo), torch.where(ok, hi, mid)
    return lo


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=10)
    p.add_argument("--depths", type=int, nargs="+", default=[2, 3, 4])
    p.add_argument("--train-epochs", type=int, default=1, help="standard training before certifying")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--eps-max", type=float, default=4.0)
    p.add_argument("--data-dir", default=None)
    args = p.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    try:
        from lirpa_shim import load_auto_lirpa, to_sequential

        auto_lirpa = load_auto_lirpa()
    except ImportError:
        auto_lirpa = None
    X, y = data.load_tensors("mnist", "test", data_dir=args.data_dir, limit=args.n)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.n} images, {args.steps}-step "
          f"bisection on [0, {args.eps_max}], all-class margins")
    for depth in args.depths:
        model, hist = train_standard(f"mlp-{depth}x1024-sigmoid", epochs=args.train_epochs, data_dir=args.data_dir,
                                     progress=False)
        pred = model(X).argmax(1)
        keep = pred == y  # both certify correctly classified points only
        t0 = time.perf_counter()
        ours = crown.certified_radius(model, X[keep], y[keep], targets="all", method="crown", steps=args.steps,
                                      eps_max=args.eps_max)["radius"]
        t_ours = (time.perf_counter() - t0) / int(keep.sum())
        n_full = float(crown._STATS["full"].double().mean())
        line = (f"{depth}x[1024] sigmoid (acc {hist[-1]['test_accuracy']:.4f}): sorobust {t_ours:.3f} s/img "
                f"({n_full:.1f} full evaluations/point), mean radius {ours.mean():.5f}")
        if auto_lirpa is not None:
            net = to_sequential(model)
            t0 = time.perf_counter()
            theirs = lirpa_radius(auto_lirpa, net, X[keep].flatten(1), y[keep], args.steps, args.eps_max)
            t_lirpa = (time.perf_counter() - t0) / int(keep.sum())
            line += (f"; auto_LiRPA {t_lirpa:.3f} s/img, mean radius {theirs.mean():.5f}; speed-up "
                     f"{t_lirpa / t_ours:.1f}x; min(ours - theirs) {(ours - theirs).min():+.2e}")
        print(line, flush=True)


if __name__ == "__main__":
    main()
