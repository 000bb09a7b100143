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
* ``crown-ibp`` (Zhang et al. 2020, "Towards Stable and Efficient Training of Verifiably Robust Neural
  Networks", Eq. 8 and §4): κ·CE(z(x), y) + (1 − κ)·CE(−m̲, y), with m̲ the lower bounds of the margins
  z_y − z_j over the ℓ2 ball of the current ε (0 for j = y), m̲ = β·m̲_CROWN-IBP + (1 − β)·m̲_IBP. The original
  schedules (``huanzhang12/CROWN-IBP`` defaults, baselines.md §4): ε is 0 for ``schedule_start`` epochs, then
  ramps linearly batch by batch to ρ over ``schedule_length`` epochs; β goes 1 → ``final_beta`` (0) and κ goes
  1 → ``final_kappa`` (0.5) with ε; Adam lr 5e-4, batch 256, 100 epochs (start 1, length 61); the learning
  rate halves every 10 epochs after the ramp. Works for relu and smooth activations (softplus: chord above,
  tangent below; ``certify/crown.py``).
* ``coap`` (Wong & Kolter 2018; Wong et al. 2018, "Scaling provable adversarial defenses"): the robust
  cross-entropy of the dual bound of the convex outer adversarial polytope, through ``convex_adversarial``,
  with the random-projection ℓ2 estimate (``norm_type="l2_normal"``, ``proj`` = 50) for training, or the exact
  bound with ``proj=0``. ε follows ``convex_adversarial/examples``: linearly from ``starting_epsilon`` (0.01) to
  ρ over the first ``schedule_length`` (20) epochs, one value per epoch; Adam lr 1e-3, batch 50, 60 epochs, the
  learning rate halved every 10 epochs after the ramp. relu only.

Reference-code defaults: Adam, lr 1e-3, batch 64, 30 epochs, seed 1, ρ_train 1.58, pixels in [0, 1]. The
baselines default to their own papers' settings (above); any of them can be overridden.

Model selection (``selection``): ``last`` (default) keeps the last epoch; ``best-val`` holds out the last
``val_size`` training images and keeps the epoch with the best accuracy on them (the honest choice);
``best-test`` keeps the epoch with the best clean *test* accuracy, as the reference code does (selection on the
test set, labelled as such in the checkpoint).

Reproducibility: every random choice derives from ``seed`` (initialisation), (seed, epoch) (batch order) and
(seed, epoch, batch) (attack starts), and the power-iteration vectors of the K regulariser are checkpointed, so
the same config and seed give bitwise-identical weights on the CPU, and a run resumed from its checkpoint after
an interruption equals the uninterrupted one. The checkpoint is rewritten after every epoch with the optimiser
state, the last-epoch weights and the per-epoch history (to ``OUT.partial`` until the last epoch, then to ``OUT``).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from . import attacks, curvature, data, models, vocab
from .errors import SorobustError

METHODS = vocab.values(vocab.TrainMethod)

# per-method defaults of the fields left as None: epochs, batch size, lr, ramp start/length (epochs), lr decay
_DEFAULTS = {
    "crown-ibp": dict(epochs=100, batch_size=256, lr=5e-4, schedule_start=1, schedule_length=61, lr_decay_step=10),
    "coap": dict(epochs=60, batch_size=50, lr=1e-3, schedule_start=0, schedule_length=20, lr_decay_step=10),
}
_REFERENCE = dict(epochs=30, batch_size=64, lr=1e-3, schedule_start=0, schedule_length=0, lr_decay_step=0)
SELECTIONS = vocab.values(vocab.Selection)


@dataclass
class TrainConfig:
    """Everything that determines a training run (stored in the checkpoint)."""

    arch: str
    dataset: str = "mnist"
    method: str = "standard"
    gamma: float = 0.0
    rho: float = 1.58
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    seed: int = 1
    attack: str = "kkt"
    pgd_steps: int = 10
    trades_beta: float = 6.0
    selection: str = "last"
    val_size: int = 5000
    limit: int | None = None
    power_iters: int = 2
    schedule_start: int | None = None
    schedule_length: int | None = None
    final_beta: float = 0.0
    final_kappa: float = 0.5
    starting_epsilon: float = 0.01
    proj: int = 50
    lr_decay_step: int | None = None
    lr_decay_factor: float = 0.5
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        for k, v in _DEFAULTS.get(self.method, _REFERENCE).items():
            if getattr(self, k) is None:
                setattr(self, k, v)

    def lr_at(self, epoch: int) -> float:
        """Learning rate of 0-based ``epoch``: halved (``lr_decay_factor``) every ``lr_decay_step`` epochs after
        the ε ramp, as both baselines' scripts do (StepLR at max(t − ramp end + 1, 0))."""
        if not self.lr_decay_step:
            return self.lr
        after = max(epoch - (self.schedule_start + self.schedule_length - 1) + 1, 0)
        return self.lr * self.lr_decay_factor ** (after // self.lr_decay_step)

    def eps_at(self, epoch: int, batch: int, n_batches: int) -> float:
        """Training ε of a batch under the method's schedule (``crown-ibp``: linear per batch from 0 after
        ``schedule_start`` epochs; ``coap``: linspace(starting_epsilon, ρ, schedule_length), one per epoch)."""
        if self.method == "coap":
            L = self.schedule_length
            if epoch >= L:
                return self.rho
            return self.starting_epsilon + (self.rho - self.starting_epsilon) * (epoch / (L - 1) if L > 1 else 1.0)
        if self.schedule_length <= 0:
            return self.rho if epoch >= self.schedule_start else 0.0
        progress = (epoch - self.schedule_start + batch / n_batches) / self.schedule_length
        return self.rho * min(max(progress, 0.0), 1.0)

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
        if self.schedule_start < 0 or self.schedule_length < 0 or self.proj < 0:
            raise SorobustError("schedule start/length and proj must be >= 0")
        if not (0 <= self.final_beta <= 1 and 0 <= self.final_kappa <= 1):
            raise SorobustError("final beta and final kappa must lie in [0, 1]")
        if self.attack not in ("kkt", "mm"):
            raise SorobustError(f"unknown CRT attack '{self.attack}'; choose kkt (default) or mm (reference)")
        model = models.build(self.arch)  # architecture errors (unknown activation, depth 1, …) surface here
        if (self.gamma > 0 or self.method in ("gamma", "crt")) and not model.activation.smooth:
            raise SorobustError(f"{self.method} training needs curvature, which {model.activation.name} nets lack; "
                                f"use sigmoid, tanh or softplus")
        if self.method == "coap" and model.activation.name != "relu":
            raise SorobustError(f"coap training needs a relu net (convex_adversarial is relu-only); got "
                                f"{model.activation.name}: use --activation relu")
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


def _crown_ibp_loss(model, xb, yb, logits, eps, cfg):
    """CROWN-IBP's objective (Zhang et al. 2020, Eq. 8) at the scheduled ε with its β, κ schedules."""
    from .certify import crown

    frac = eps / cfg.rho if cfg.rho > 0 else 1.0
    beta = 1.0 - (1.0 - cfg.final_beta) * frac
    kappa = 1.0 - (1.0 - cfg.final_kappa) * frac
    lb = crown.margin_bounds(model, xb, yb, eps, method="ibp")
    if beta > 0:
        lb = beta * crown.margin_bounds(model, xb, yb, eps, method="crown-ibp") + (1 - beta) * lb
    # CE over [0, −m̲_j (j ≠ y)] with the true class at index 0: the robust cross-entropy of the worst-case logits
    robust = F.cross_entropy(torch.cat([torch.zeros_like(lb[:, :1]), -lb], 1),
                             torch.zeros(len(yb), dtype=torch.long, device=yb.device))
    ce = F.cross_entropy(logits, yb)
    stats = {"robust_ce": robust.item(), "verified_ibp_err": (lb.min(1).values <= 0).float().mean().item(),
             "eps": eps, "beta": beta, "kappa": kappa}
    return kappa * ce + (1 - kappa) * robust, ce, stats


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
    def loss(self, xb, yb, gen, eps: float = 0.0):
        """The objective of ``cfg.method`` on one batch (``eps``: the scheduled training radius of the
        certified-training baselines): the method's loss from :data:`LOSSES`, plus γ·K (Theorem 4) where the model
        is smooth and γ > 0; returns (loss, stats)."""
        cfg, model = self.cfg, self.model
        if cfg.method in WHOLE_LOSSES:
            return WHOLE_LOSSES[cfg.method](self, xb, yb, gen, eps)
        logits = model(xb)
        t = _runner_up(logits, yb) if model.activation.smooth else None
        loss, ce, stats = LOSSES[cfg.method](self, xb, yb, logits, t, gen, eps)
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
        for group in self.opt.param_groups:
            group["lr"] = cfg.lr_at(e)
        self.model.train()
        bar = tqdm(range(n_batches), desc=f"{cfg.method} epoch {e + 1}/{cfg.epochs}", disable=not self.progress,
                   leave=False)
        for b in bar:
            idx = order[b * cfg.batch_size:(b + 1) * cfg.batch_size]
            xb, yb = self.X[idx].to(self.device), self.y[idx].to(self.device)
            gen = torch.Generator().manual_seed((cfg.seed * 100003 + e) * 100003 + b)
            self.opt.zero_grad()
            loss, stats = self.loss(xb, yb, gen, cfg.eps_at(e, b, n_batches))
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
        rec.update(epoch=e + 1, lr=cfg.lr_at(e), seconds=time.perf_counter() - t0,
                   test_accuracy=self._accuracy(self.Xte, self.yte))
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
                "config": asdict(self.cfg), "resume_key": self.resume_key}

    @property
    def resume_key(self) -> dict:
        """What a ``.partial`` must match to be resumed from: the configuration, the sha256 of the data files and
        the numerics version of training (:func:`sorobust.resume.resume_key`); computed once."""
        if getattr(self, "_resume_key", None) is None:
            from .resume import resume_key

            self._resume_key = resume_key("train", asdict(self.cfg),
                                          data=data.raw_dir(self.cfg.dataset, self.data_dir))
        return self._resume_key

    def resume(self, state: dict) -> None:
        if state.get("config") != asdict(self.cfg):
            raise SorobustError(f"'{self.out}' was written by another configuration; use a new --out or delete it")
        self.model.load_state_dict(state["last_state_dict"])
        self.opt.load_state_dict(state["optimizer"])
        self.epoch, self.history, self.best = state["epoch"], list(state["history"]), state["best"]
        if self.norms is not None:
            self.norms.load(state["spectral_u"])

    @property
    def partial(self) -> Path | None:
        return None if self.out is None else self.out.with_name(self.out.name + ".partial")

    def save(self, provenance: dict | None = None, path: Path | None = None) -> None:
        selected = models.build(self.cfg.arch)
        selected.load_state_dict(self.best["state_dict"])
        meta = {"method": self.cfg.method, "gamma": self.cfg.gamma, "rho": self.cfg.rho, "epochs": self.epoch,
                "selection": self.cfg.selection, "selected_epoch": self.best["epoch"],
                "selected_on_test_set": self.cfg.selection == "best-test", "history": self.history,
                "config": asdict(self.cfg), "provenance": provenance or {}}
        models.save(selected, path or self.out, train_state=self.state(), **meta)

    def _resume_partial(self) -> None:
        """Resume from ``OUT.partial`` if it was made from the same content (:attr:`resume_key`); otherwise start
        afresh and say so; an unreadable partial is set aside (renamed), never deleted (issue 11)."""
        from .resume import key_mismatch, say, set_aside

        try:
            state = models.load_train_state(self.partial, map_location=self.device)
            if not isinstance(state, dict):
                raise ValueError("it holds no training state")
        except Exception as e:  # truncated, not a torch file, refused by weights_only: all mean unreadable
            set_aside(self.partial, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
            return
        diff = key_mismatch(state.get("resume_key"), self.resume_key)
        if diff:
            say(f"note: '{self.partial}' was made with another {'; '.join(diff)}; starting afresh")
            return
        try:
            self.resume(state)
        except Exception as e:  # keys or shapes missing: set it aside and rebuild the untouched initial state
            set_aside(self.partial, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
            self.__init__(self.cfg, data_dir=self.data_dir, device=self.device, out=self.out,
                          progress=self.progress)
            return
        say(f"note: resuming '{self.out}' from '{self.partial.name}' after epoch {self.epoch} of {self.cfg.epochs}")

    def fit(self, provenance_fn=None):
        """Run the remaining epochs. With ``out``, progress is checkpointed after every epoch to ``OUT.partial``
        (resumed from on the next run), and ``OUT`` is written only when training is complete, so a file at
        ``OUT`` is never a half-trained model."""
        if self.out is not None and self.out.is_file():
            state = models.load_train_state(self.out, map_location=self.device)
            if state is not None:
                self.resume(state)
        elif self.out is not None and self.partial.is_file():
            self._resume_partial()
        while self.epoch < self.cfg.epochs:
            self.run_epoch()
            if self.out is not None and self.epoch < self.cfg.epochs:
                self.save(provenance_fn(self) if provenance_fn else None, path=self.partial)
        if self.out is not None:
            self.save(provenance_fn(self) if provenance_fn else None)
            if self.partial.is_file():
                self.partial.unlink()
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


# ------------------------------------------------------------------------------------------------ losses
# One function per training method (sorobust.vocab.TrainMethod): (trainer, batch, labels, logits, runner-up targets,
# generator, scheduled ε) -> (loss, cross-entropy, stats). Trainer.loss adds γ·K to every one of them.


def _loss_cross_entropy(tr, xb, yb, logits, t, gen, eps):
    """standard and γ-regularised training: cross-entropy (γ·K is added by Trainer.loss)."""
    ce = F.cross_entropy(logits, yb)
    return ce, ce, {}


def _loss_crt(tr, xb, yb, logits, t, gen, eps):
    """CRT (paper.md §1.4): cross-entropy at the second-order attack's x* (Definition 2) against the runner-up."""
    cfg, model = tr.cfg, tr.model
    model.eval()
    # the reference MM attack needs M as a majoriser (50 power steps, as the reference); the KKT attack only uses m
    # to keep η where the dual is convex, so a coarse estimate suffices
    cb = curvature.CurvatureBounds(model, estimate=True, iters=50 if cfg.attack == "mm" else 10)
    adv = attacks.second_order(model, xb, yb, cfg.rho, targets=t, bounds_cache=cb, solver=cfg.attack, verify=False)
    model.train()
    ce = F.cross_entropy(model(adv.x_adv.detach().view_as(xb)), yb)
    return ce, ce, {"attack_success": adv.success.float().mean().item()}


def _loss_pgd(tr, xb, yb, logits, t, gen, eps):
    """PGD adversarial training (Madry et al. 2018), ℓ2: cross-entropy at an all-class PGD point of the ρ-ball."""
    cfg, model = tr.cfg, tr.model
    adv = attacks.pgd_l2(model, xb, yb, cfg.rho, targets="all", steps=cfg.pgd_steps,
                         step_size=2.5 * cfg.rho / cfg.pgd_steps, init_std=0.001, generator=gen, verify=False)
    ce = F.cross_entropy(model(adv.x_adv.detach().view_as(xb)), yb)
    return ce, ce, {"attack_success": adv.success.float().mean().item()}


def _loss_crown_ibp(tr, xb, yb, logits, t, gen, eps):
    """CROWN-IBP (Zhang et al. 2020): κ·natural + (1 − κ)·robust cross-entropy of the mixed bound."""
    return _crown_ibp_loss(tr.model, xb, yb, logits, eps, tr.cfg)


def _loss_trades(tr, xb, yb, logits, t, gen, eps):
    """TRADES (Zhang et al. 2019): cross-entropy + β·KL(f(x) ‖ f(x')) at a KL-PGD point x' of the ρ-ball."""
    cfg, model = tr.cfg, tr.model
    xa = _kl_pgd(model, xb, cfg.rho, cfg.pgd_steps, gen)
    ce = F.cross_entropy(logits, yb)
    kl = F.kl_div(F.log_softmax(model(xa), 1), F.softmax(logits, 1), reduction="batchmean")
    return ce + cfg.trades_beta * kl, ce, {}


def _loss_coap(tr, xb, yb, gen, eps):
    """COAP (Wong & Kolter 2018; ℓ2: Wong et al. 2018): the robust cross-entropy of convex_adversarial's dual
    network at the scheduled ε; relu nets, so no γ·K. Its random projections are seeded per batch (from seed, epoch,
    batch): reproducible and resumable."""
    from .certify import coap

    cfg, model = tr.cfg, tr.model
    seed = int(torch.randint(2**31 - 1, (1,), generator=gen))
    loss, err = coap.robust_loss(model, xb, yb, eps, norm_type="l2_normal" if cfg.proj else "l2",
                                 proj=cfg.proj or 50, seed=seed)
    return loss, {"ce": loss.item(), "robust_err": float(err), "eps": eps}


#: the training objective of each method given the batch's logits (Trainer.loss adds γ·K)
LOSSES = {"standard": _loss_cross_entropy, "gamma": _loss_cross_entropy, "crt": _loss_crt, "pgd": _loss_pgd,
          "crown-ibp": _loss_crown_ibp, "trades": _loss_trades}
#: methods whose objective is whole by itself (no forward pass of their own before it, no γ·K)
WHOLE_LOSSES = {"coap": _loss_coap}
