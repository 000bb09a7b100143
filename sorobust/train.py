"""Standard (cross-entropy) training, the minimal trainer the core needs (paper.md §2.3, §4).

Reference-code defaults: Adam, lr 1e-3, batch 64, seed 1, pixels in [0, 1] without normalisation. The
γ-regularised, CRT and baseline objectives come with the training issue; this module keeps the loop, the
checkpointing (one file per epoch, resumable) and the progress bar.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from . import data, models
from .errors import SorobustError


def evaluate(model, X: torch.Tensor, y: torch.Tensor, batch_size: int = 1000) -> float:
    """Clean accuracy of ``model`` on (X, y)."""
    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(y), batch_size):
            correct += (model(X[i:i + batch_size]).argmax(1) == y[i:i + batch_size]).sum().item()
    return correct / max(len(y), 1)


def train_standard(arch: str | dict, dataset: str = "mnist", epochs: int = 1, batch_size: int = 64,
                   lr: float = 1e-3, seed: int = 1, data_dir=None, limit: int | None = None,
                   out: str | Path | None = None, progress: bool = True, device="cpu"):
    """Train ``arch`` with cross-entropy and Adam; returns (model, history).

    If ``out`` is given, the model is saved there after every epoch together with the optimiser state in
    ``out + '.resume'``; a rerun with the same ``out`` continues from the last finished epoch.
    """
    torch.manual_seed(seed)
    model = models.build(arch).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    start, history = 0, []
    resume = Path(str(out) + ".resume") if out is not None else None
    if resume is not None and resume.is_file():
        state = torch.load(resume, weights_only=True, map_location=device)
        if state.get("arch") != model.arch:
            raise SorobustError(f"resume file '{resume}' belongs to another architecture; delete it to restart")
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        start, history = state["epoch"], list(state["history"])
        torch.set_rng_state(state["rng"].cpu())
    train_loader = data.loader(dataset, "train", batch_size=batch_size, shuffle=True, seed=seed + start,
                               data_dir=data_dir, limit=limit)
    Xte, yte = data.load_tensors(dataset, "test", data_dir=data_dir, limit=limit)
    Xte, yte = Xte.to(device), yte.to(device)
    for epoch in range(start, epochs):
        model.train()
        t0 = time.perf_counter()
        bar = tqdm(train_loader, desc=f"epoch {epoch + 1}/{epochs}", disable=not progress, leave=False)
        total, n = 0.0, 0
        for xb, yb in bar:
            xb, yb = xb.to(device), yb.to(device)
            opt.zero_grad()
            loss = F.cross_entropy(model(xb), yb)
            loss.backward()
            opt.step()
            total += loss.item() * len(yb)
            n += len(yb)
            bar.set_postfix(loss=f"{total / n:.4f}")
        acc = evaluate(model, Xte, yte)
        history.append({"epoch": epoch + 1, "loss": total / max(n, 1), "test_accuracy": acc,
                        "time_s": time.perf_counter() - t0})
        if not torch.isfinite(torch.tensor(total)):
            raise SorobustError(f"training diverged in epoch {epoch + 1} (loss is not finite); lower --lr")
        if out is not None:
            models.save(model, out, dataset=dataset, method="standard", epochs=epoch + 1, batch_size=batch_size,
                        lr=lr, seed=seed, limit=limit, history=history)
            from .artifacts import atomic_write

            with atomic_write(resume, mode="wb") as fh:
                torch.save({"arch": model.arch, "model": model.state_dict(), "opt": opt.state_dict(),
                            "epoch": epoch + 1, "history": history, "rng": torch.get_rng_state()}, fh)
    model.eval()
    return model, history
