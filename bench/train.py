"""Benchmark: one CRT step on 784-1024-10 softplus with the reference attack and with the default attack.

For the same batches of MNIST training images (batch 64, ρ = 1.58, γ = 0.01) it times a full CRT training step
(attack + cross-entropy on x* + γK + backward + Adam) with

* ``mm``: the reference code's attack, 30 bisection steps × 10 majorisation–minimisation steps, and
* ``kkt``: the default, Newton on the attack's KKT system with Hessian–vector products,

and reports seconds per batch, the ratio, and both attacks' success rates (‖x* − x0‖ = ρ within 1e-4) and mean
f(x*) on the same batches. Both start from the same weights (a briefly trained net, or --checkpoint) and each
step is undone before the next, so the batches and weights are identical for the two attacks.

Usage: python bench/train.py [--batches 20] [--warmup-epochs 1] [--data-dir DIR] [--checkpoint CKPT]
"""

from __future__ import annotations

import argparse
import copy
import time

import torch
import torch.nn.functional as F

from sorobust import attacks, curvature, data, models
from sorobust.certify.crc import runner_up
from sorobust.train import train_standard


def crt_step(model, opt, xb, yb, rho, gamma, solver, norms):
    logits = model(xb)
    t = runner_up(logits.detach(), yb)
    cb = curvature.CurvatureBounds(model, estimate=True, iters=50 if solver == "mm" else 10)
    adv = attacks.second_order(model, xb, yb, rho, targets=t, bounds_cache=cb, solver=solver)
    opt.zero_grad()
    loss = F.cross_entropy(model(adv.x_adv), yb) + gamma * curvature.K(model, yb, t, norms=norms()).mean()
    loss.backward()
    opt.step()
    return adv


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batches", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--rho", type=float, default=1.58)
    p.add_argument("--gamma", type=float, default=0.01)
    p.add_argument("--warmup-epochs", type=int, default=1, help="standard epochs before timing (0: fresh net)")
    p.add_argument("--checkpoint", default=None)
    p.add_argument("--arch", default=None)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.checkpoint:
        base = models.load(args.checkpoint, arch=args.arch)
    elif args.warmup_epochs:
        base, _ = train_standard("mlp-2x1024-softplus", epochs=args.warmup_epochs, data_dir=args.data_dir,
                                 progress=False)
    else:
        torch.manual_seed(1)
        base = models.mlp(2, 1024, "softplus")
    X, y = data.load_tensors("mnist", "train", data_dir=args.data_dir, limit=args.batches * args.batch_size)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.batches} batches of "
          f"{args.batch_size}, rho {args.rho}, gamma {args.gamma}")
    res = {}
    for solver in ("mm", "kkt"):
        times, succ, fs = [], [], []
        for b in range(args.batches):
            model = copy.deepcopy(base).train()
            opt = torch.optim.Adam(model.parameters(), lr=1e-3)
            norms = curvature.SpectralNorms(model, n_iter=2, seed=1)
            xb, yb = X[b * args.batch_size:(b + 1) * args.batch_size], y[b * args.batch_size:(b + 1) * args.batch_size]
            t0 = time.perf_counter()
            adv = crt_step(model, opt, xb, yb, args.rho, args.gamma, solver, norms)
            times.append(time.perf_counter() - t0)
            succ.append(adv.success.float().mean().item())
            fs.append(adv.f.mean().item())
        res[solver] = (sum(times) / len(times), sum(succ) / len(succ), sum(fs) / len(fs))
        print(f"{solver:>4}: {res[solver][0]:.3f} s/batch, attack success {res[solver][1]:.4f}, "
              f"mean f(x*) {res[solver][2]:.5f}")
    print(f"speed-up mm/kkt per batch: {res['mm'][0] / res['kkt'][0]:.1f}x; "
          f"success kkt - mm: {res['kkt'][1] - res['mm'][1]:+.4f}")


if __name__ == "__main__":
    main()
