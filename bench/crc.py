"""Benchmark: CRC solvers on a briefly trained 784-1024-10 softplus MLP (issue 2).

Trains the net for one epoch on MNIST (or loads --checkpoint), then on the first N test points under the
runner-up protocol reports:

* the one-time cost of the curvature bounds: all 90 (y, t) pairs, computed once and reused for every point;
* the per-point time of the reference solver ``mm`` (30×20 majorisation–minimisation) and of the default
  solver ``kkt`` on the same points, in the same run, and their ratio;
* the largest certificate difference (default − mm, both for the sound certificate and against mm's
  reference-formula value) and the number of points where the default is below mm's − 1e-4.

Usage: python bench/crc.py [--n 1000] [--data-dir DIR] [--checkpoint CKPT [--arch SPEC]] [--threads 2]
"""

from __future__ import annotations

import argparse
import time

import torch

from sorobust import curvature, data, models
from sorobust.certify import crc
from sorobust.train import train_standard


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--checkpoint", default=None)
    p.add_argument("--arch", default=None, help="architecture of a plain (reference-code) state dict")
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.checkpoint:
        model = models.load(args.checkpoint, arch=args.arch)
    else:
        t0 = time.perf_counter()
        model, hist = train_standard("mlp-2x1024-softplus", epochs=1, data_dir=args.data_dir, progress=False)
        print(f"trained 784-1024-10 softplus for 1 epoch in {time.perf_counter() - t0:.1f} s, "
              f"test accuracy {hist[-1]['test_accuracy']:.4f}")
    X, y = data.load_tensors("mnist", "test", data_dir=args.data_dir, limit=args.n)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.n} points, runner-up protocol")

    t0 = time.perf_counter()
    cb = curvature.CurvatureBounds(model).all_pairs()
    t_bounds = time.perf_counter() - t0
    print(f"curvature bounds, all 90 (y,t) pairs (45 eigen-problem pairs): {t_bounds:.2f} s (once per model)")

    out = {}
    for solver in ("mm", "kkt"):
        certs, refs, conv, iters = [], [], [], []
        t0 = time.perf_counter()
        for i in range(0, args.n, args.batch_size):
            r = crc(model, X[i:i + args.batch_size], y[i:i + args.batch_size], targets="runner-up",
                    solver=solver, bounds_cache=cb)
            certs.append(r.certificate), refs.append(r.certificate_reference), conv.append(r.converged)
            iters.append(r.iterations)
        dt = time.perf_counter() - t0
        out[solver] = {"cert": torch.cat(certs), "ref": torch.cat(refs), "conv": torch.cat(conv),
                       "iters": torch.cat(iters).double(), "per_point_ms": 1e3 * dt / args.n}
        o = out[solver]
        print(f"{solver:>4}: {o['per_point_ms']:.2f} ms/point, mean gradient-equivalents/point "
              f"{o['iters'].mean():.0f}, converged {o['conv'].float().mean():.3f}, "
              f"mean certificate {o['cert'].mean():.5f}")
    mm, kk = out["mm"], out["kkt"]
    ratio = mm["per_point_ms"] / kk["per_point_ms"]
    d_sound = kk["cert"] - mm["cert"]
    d_ref = kk["cert"] - mm["ref"]
    print(f"speed-up mm/kkt per point: {ratio:.1f}x")
    print(f"certificate difference kkt - mm (sound vs sound): min {d_sound.min():.3e}, max {d_sound.max():.3e}, "
          f"max |.| {d_sound.abs().max():.3e}; points below mm - 1e-4: {(d_sound < -1e-4).sum().item()}")
    print(f"kkt (sound) - mm reference-formula value: min {d_ref.min():.3e}, max {d_ref.max():.3e}; "
          f"points below - 1e-4: {(d_ref < -1e-4).sum().item()}")


if __name__ == "__main__":
    main()
