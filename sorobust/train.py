"""Training: standard, γ-regularised ("γ = c"), CRT, PGD and TRADES (paper.md §2.3, §3.7, §4).

Objectives, per batch (x, y), with t the runner-up class of the clean logits (paper.md §6 item 6):

* ``standard``: CE(z(x), y).
* ``gamma``: CE(z(x), y) + γ·mean_i K(W, y_i, t_i) ("standard training with γ set to c", ICLR §5), with K of
  Theorem 4 at every depth, as the reference regularises (``lipschitz_bound``, paper.md §2.3).
* ``crt``: CE(z(x*), y) + γ·mean_i K(W, y_i, t_i), x* the second-order attack of Definition 2 at radius ρ
  (Curvature-based Robust Training). The attack's m, M are power-iteration estimates (as the reference), which
  only steer the attack (50 power steps for ``mm``, whose step size needs M; 10 for ``kkt``, which only uses m
  to keep η ≥ −m). The default attack solver is ``kkt`` (Newton on the KKT system); ``--attack mm`` is the
  reference's 30×10 majorisation–minimisation.
* ``pgd``: CE(z(x'), y) with x' from untargeted ℓ2 PGD (Madry et al. 2018) in the ρ-ball, clamped to [0, 1]:
  ``pgd_steps`` steps (default 10) of size 2.5ρ/steps, random start (ICLR Table 3; its settings are unknown).
* ``trades``: CE(z(x), y) + β·KL(p(x) ‖ p(x')) with x' maximising the KL by the same PGD (Zhang et al. 2019),
  β = 6 by default.

Reference-code defaults: Adam, lr 1e-3, batch 64, 30 epochs, seed 1, ρ_train 1.58, pixels in [0, 1].

Model selection (``selection``): ``last`` (default) keeps the last epoch; ``best-val`` holds out the last
``val_size`` training images and keeps the epoch with the best accuracy on them (the honest choice);
``best-test`` keeps the epoch with the best clean *test* accuracy, as the reference code does (selection on the
test set, labelled as such in the checkpoint).

Reproducibility: every random choice derives from ``seed`` (initialisation), (seed, epoch) (batch order) and
(seed, epoch, batch) (attack starts), and the power-iteration vectors of the K regulariser are checkpointed, so
the same config and seed give bitwise-identical weights on the CPU, and a run resumed from its checkpoint after
an interruption equals the uninterrupted one. The checkpoint is rewritten after every epoch with the optimiser
state, the last-epoch weights and the per-epoch history.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from . import attacks, curvature, data, models
from .errors import SorobustError

METHODS = ("standard", "gamma", "crt", "pgd", "trades")
SELECTIONS = ("last", "best-val", "best-test")


@dataclass
class TrainConfig:
    """Everything that determines a training run (stored in the checkpoint)."""

    arch: str
    dataset: str = "mnist"
    method: str = "standard"
    gamma: float = 0.0
    rho: float = 1.58
    epochs: int = 30
    batch_size: int = 64
    lr: float = 1e-3
    seed: int = 1
    attack: str = "kkt"
    pgd_steps: int = 10
    trades_beta: float = 6.0
    selection: str = "last"
    val_size: int = 5000
    limit: int | None = None
    power_iters: int = 2
    extra: dict = field(default_factory=dict)

    def validate(self) -> "TrainConfig":
        if self.method not in METHODS:
            raise SorobustError(f"unknown training method '{self.method}'; choose one of {', '.join(METHODS)}")
        if self.selection not in SELECTIONS:
            raise SorobustError(f"unknown model selection '{self.selection}'; choose one of {', '.join(SELECTIONS)}")
        if not self.gamma >= 0:
            raise SorobustError(f"gamma must be >= 0 (got {self.gamma}); it weighs the curvature penalty gamma*K")
        if self.method in ("crt", "pgd", "trades") and not self.rho > 0:
            raise SorobustError(f"--rho must be > 0 for {self.method} training (got {self.rho})")
        if self.epochs < 1 or self.batch_size < 1 or not self.lr > 0:
            raise SorobustError("epochs and batch size must be >= 1 and the learning rate > 0")
        if self.attack not in ("kkt", "mm"):
            raise SorobustError(f"unknown CRT attack '{self.attack}'; choose kkt (default) or mm (reference)")
        model = models.build(self.arch)  # architecture errors (unknown activation, depth 1, …) surface here
        if (self.gamma > 0 or self.method in ("gamma", "crt")) and not model.activation.smooth:
            raise SorobustError(f"{self.method} training needs curvature, which {model.activation.name} nets lack; "
                                f"use sigmoid, tanh or softplus")
        return self


def _runner_up(logits, y):
    from .certify.crc import runner_up

    return runner_up(logits.detach(), y)


def _kl_pgd(model, x, rho, steps, gen):
    """TRADES inner maximisation: ℓ2 PGD on KL(p(x) ‖ p(x')) in the ρ-ball, clamped to [0, 1]."""
    with torch.no_grad():
        p_clean = F.softmax(model(x), 1)
    xa = (x + 0.001 * torch.randn(x.shape, generator=gen, dtype=x.dtype).to(x.device)).detach()
    step = 2.5 * rho / steps
    for _ in range(steps):
        xa.requires_grad_(True)
        with torch.enable_grad():
            kl = F.kl_div(F.log_softmax(model(xa), 1), p_clean, reduction="sum")
            g = torch.autograd.grad(kl, xa)[0]
        with torch.no_grad():
            xa = xa + step * g / (g.flatten(1).norm(dim=1).clamp(min=1e-12).view(-1, *[1] * (x.dim() - 1)))
            d = xa - x
            n = d.flatten(1).norm(dim=1).view(-1, *[1] * (x.dim() - 1))
            xa = (x + torch.where(n > rho, d * rho / n, d)).clamp(0, 1)
        xa = xa.detach()
    return xa


class Trainer:
    """One training run; :meth:`fit` runs (or resumes) it and returns the selected model and the history."""

    def __init__(self, cfg: TrainConfig, data_dir=None, device="cpu", out: str | Path | None = None,
                 progress: bool = True):
        self.cfg = cfg.validate()
        self.device = torch.device(device)
        self.out = Path(out) if out is not None else None
        self.progress = progress
        self.data_dir = data_dir
        torch.manual_seed(cfg.seed)
        self.model = models.build(cfg.arch).to(self.device)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=cfg.lr)
        needs_k = cfg.gamma > 0 or cfg.method in ("gamma", "crt")
        self.norms = curvature.SpectralNorms(self.model, cfg.power_iters, seed=cfg.seed) if needs_k else None
        X, y = data.load_tensors(cfg.dataset, "train", data_dir=data_dir, limit=cfg.limit)
        self.Xv = self.yv = None
        if cfg.selection == "best-val":
            n_val = min(cfg.val_size, len(y) // 5)
            X, y, self.Xv, self.yv = X[:-n_val], y[:-n_val], X[-n_val:], y[-n_val:]
        self.X, self.y = X, y
        self.Xte, self.yte = data.load_tensors(cfg.dataset, "test", data_dir=data_dir, limit=cfg.limit)
        self.epoch, self.history, self.best = 0, [], None

    # ------------------------------------------------------------------------------------------------------
    def loss(self, xb, yb, gen):
        """The objective of ``cfg.method`` on one batch; returns (loss, stats)."""
        cfg, model = self.cfg, self.model
        stats = {}
        logits = model(xb)
        t = _runner_up(logits, yb) if model.activation.smooth else None
        if cfg.method in ("standard", "gamma"):
            loss = ce = F.cross_entropy(logits, yb)
        elif cfg.method == "crt":
            model.eval()
            # the reference MM attack needs M as a majoriser (50 power steps, as the reference); the KKT attack
            # only uses m to keep η where the dual is convex, so a coarse estimate suffices
            cb = curvature.CurvatureBounds(model, estimate=True, iters=50 if cfg.attack == "mm" else 10)
            adv = attacks.second_order(model, xb, yb, cfg.rho, targets=t, bounds_cache=cb, solver=cfg.attack)
            model.train()
            stats["attack_success"] = adv.success.float().mean().item()
            loss = ce = F.cross_entropy(model(adv.x_adv.detach().view_as(xb)), yb)
        elif cfg.method == "pgd":
            adv = attacks.pgd_l2(model, xb, yb, cfg.rho, targets="all", steps=cfg.pgd_steps,
                                 step_size=2.5 * cfg.rho / cfg.pgd_steps, init_std=0.001, generator=gen)
            stats["attack_success"] = adv.success.float().mean().item()
            loss = ce = F.cross_entropy(model(adv.x_adv.detach().view_as(xb)), yb)
        else:  # trades
            xa = _kl_pgd(model, xb, cfg.rho, cfg.pgd_steps, gen)
            ce = F.cross_entropy(logits, yb)
            kl = F.kl_div(F.log_softmax(model(xa), 1), F.softmax(logits, 1), reduction="batchmean")
            loss = ce + cfg.trades_beta * kl
        stats["ce"] = ce.item()
        if self.norms is not None:
            k = curvature.K(model, yb, t, norms=self.norms()).mean()
            stats["K"] = k.item()
            if cfg.gamma > 0:
                loss = loss + cfg.gamma * k
        return loss, stats

    def _accuracy(self, X, y):
        return evaluate(self.model, X.to(self.device), y.to(self.device))

    def run_epoch(self):
        cfg = self.cfg
        e = self.epoch
        order = torch.randperm(len(self.y), generator=torch.Generator().manual_seed(cfg.seed * 100003 + e))
        n_batches = (len(order) + cfg.batch_size - 1) // cfg.batch_size
        sums, n_seen = {}, 0
        t0 = time.perf_counter()
        self.model.train()
        bar = tqdm(range(n_batches), desc=f"{cfg.method} epoch {e + 1}/{cfg.epochs}", disable=not self.progress,
                   leave=False)
        for b in bar:
            idx = order[b * cfg.batch_size:(b + 1) * cfg.batch_size]
            xb, yb = self.X[idx].to(self.device), self.y[idx].to(self.device)
            gen = torch.Generator().manual_seed((cfg.seed * 100003 + e) * 100003 + b)
            self.opt.zero_grad()
            loss, stats = self.loss(xb, yb, gen)
            if not torch.isfinite(loss):
                raise SorobustError(f"training diverged in epoch {e + 1}, batch {b} (loss is not finite); "
                                    f"lower --lr or --gamma")
            loss.backward()
            self.opt.step()
            stats["loss"] = loss.item()
            for k, v in stats.items():
                sums[k] = sums.get(k, 0.0) + v * len(yb)
            n_seen += len(yb)
            bar.set_postfix({k: f"{sums[k] / n_seen:.4f}" for k in ("loss", "K") if k in sums})
        rec = {k: v / n_seen for k, v in sums.items()}
        rec.update(epoch=e + 1, seconds=time.perf_counter() - t0, test_accuracy=self._accuracy(self.Xte, self.yte))
        if self.Xv is not None:
            rec["val_accuracy"] = self._accuracy(self.Xv, self.yv)
        self.history.append(rec)
        self.epoch += 1
        key = {"best-val": "val_accuracy", "best-test": "test_accuracy"}.get(cfg.selection)
        if key is None or self.best is None or rec[key] > self.best["score"]:
            self.best = {"epoch": e + 1, "score": rec.get(key, 0.0),
                         "state_dict": {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}}

    # ------------------------------------------------------------------------------------------------------
    def state(self) -> dict:
        return {"epoch": self.epoch, "history": self.history, "optimizer": self.opt.state_dict(),
                "last_state_dict": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
                "best": self.best, "spectral_u": self.norms.state() if self.norms is not None else None,
                "config": asdict(self.cfg)}

    def resume(self, state: dict) -> None:
        if state.get("config") != asdict(self.cfg):
            raise SorobustError(f"'{self.out}' was written by another configuration; use a new --out or delete it")
        self.model.load_state_dict(state["last_state_dict"])
        self.opt.load_state_dict(state["optimizer"])
        self.epoch, self.history, self.best = state["epoch"], list(state["history"]), state["best"]
        if self.norms is not None:
            self.norms.load(state["spectral_u"])

    def save(self, provenance: dict | None = None) -> None:
        selected = models.build(self.cfg.arch)
        selected.load_state_dict(self.best["state_dict"])
        meta = {"method": self.cfg.method, "gamma": self.cfg.gamma, "rho": self.cfg.rho, "epochs": self.epoch,
                "selection": self.cfg.selection, "selected_epoch": self.best["epoch"],
                "selected_on_test_set": self.cfg.selection == "best-test", "history": self.history,
                "config": asdict(self.cfg), "provenance": provenance or {}}
        models.save(selected, self.out, train_state=self.state(), **meta)

    def fit(self, provenance_fn=None):
        if self.out is not None and self.out.is_file():
            state = models.load_train_state(self.out, map_location=self.device)
            if state is not None:
                self.resume(state)
        while self.epoch < self.cfg.epochs:
            self.run_epoch()
            if self.out is not None:
                self.save(provenance_fn(self) if provenance_fn else None)
        model = models.build(self.cfg.arch)
        model.load_state_dict(self.best["state_dict"])
        return model.eval(), self.history


def evaluate(model, X: torch.Tensor, y: torch.Tensor, batch_size: int = 1000) -> float:
    """Clean accuracy of ``model`` on (X, y)."""
    was_training = model.training
    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(y), batch_size):
            correct += (model(X[i:i + batch_size]).argmax(1) == y[i:i + batch_size]).sum().item()
    model.train(was_training)
    return correct / max(len(y), 1)


def train(cfg: TrainConfig, data_dir=None, device="cpu", out=None, progress=True, provenance_fn=None):
    """Run (or resume) the training described by ``cfg``; returns (selected model, history)."""
    return Trainer(cfg, data_dir=data_dir, device=device, out=out, progress=progress).fit(provenance_fn)


def train_standard(arch, dataset: str = "mnist", epochs: int = 1, batch_size: int = 64, lr: float = 1e-3,
                   seed: int = 1, data_dir=None, limit: int | None = None, out=None, progress: bool = True,
                   device="cpu"):
    """Standard cross-entropy training (shorthand for :func:`train` with ``method="standard"``)."""
    arch = arch if isinstance(arch, str) else models.spec(arch)
    cfg = TrainConfig(arch=arch, dataset=dataset, method="standard", epochs=epochs, batch_size=batch_size, lr=lr,
                      seed=seed, limit=limit)
    return train(cfg, data_dir=data_dir, device=device, out=out, progress=progress)
