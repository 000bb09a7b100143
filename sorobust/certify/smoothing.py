"""Randomized smoothing (Cohen, Rosenfeld & Kolter 2019, "Certified Adversarial Robustness via Randomized
Smoothing", ICML 2019): a **probabilistic** ℓ2 certificate, unlike the sound certificates of CRC and the CROWN family.

The smoothed classifier of a base classifier f is g(x) = argmax_c P(f(x + δ) = c), δ ~ N(0, σ² I). Cohen et al.'s
Theorem 1: if the top class c_A of g at x has probability at least p_A (and every other class at most
p_B ≤ 1 − p_A), then g(x + δ') = c_A for every ‖δ'‖₂ < R = σ/2 (Φ⁻¹(p_A) − Φ⁻¹(p_B)); with p_B = 1 − p_A this is
R = σ Φ⁻¹(p_A), which is what their CERTIFY uses. g is not computable, so CERTIFY (their pseudocode for
certification; reproduced by :func:`certify`):

1. draw n0 noisy copies of x, ĉ_A = the class f predicts most often (selection samples);
2. draw n **fresh** noisy copies, count k = #{f(x + δ) = ĉ_A} (estimation samples);
3. p_A_lower = the one-sided (1 − α) Clopper–Pearson lower confidence bound on p_A from (k, n)
   (Clopper & Pearson 1934; computed by :func:`statsmodels.stats.proportion.proportion_confint` with method
   ``"beta"`` at level 2α, i.e. the α quantile of Beta(k, n − k + 1), as in Cohen et al.'s code);
4. if p_A_lower < 1/2 abstain, else return ĉ_A with radius R = σ Φ⁻¹(p_A_lower).

**What the certificate means.** With probability at least 1 − α over the estimation noise, *if* CERTIFY returns
ĉ_A with radius R, then g predicts ĉ_A on the whole open ball of radius R around x (Cohen et al., Proposition 2).
It is a statement about the smoothed classifier g, not about the base network f, and it can be wrong with
probability up to α per point: these radii are **not sound** in the sense of CRC's or CROWN's (module constant
:data:`PROBABILISTIC`); tables and figures should label them with :data:`LABEL`. (Theorem 1 also assumes exact
arithmetic: Voráček & Hein, "Sound Randomized Smoothing in Floating-Point Arithmetic", ICLR 2023, construct
floating-point classifiers where the practice certifies wrongly; this module follows Cohen et al.'s practice.)

**Sampling.** Every (point, sample) pair gets its own noise: the B·m forward passes of a phase (m = n0 or n) are
laid out point-major and evaluated ``batch`` rows at a time, each chunk's noise one draw from ``generator``; counts
are accumulated with ``bincount`` over (point, class). The selection phase consumes the generator before the
estimation phase, so the two samples are independent. A rerun with an equal generator state, the same points and
the same ``batch`` gives the same counts and radii bit for bit. The noise a point receives depends on which points
share its call (and on ``batch``), so results are **not** invariant to how the points are batched — only their
distribution is.
"""

from __future__ import annotations

import time

import torch

#: The radii of this module hold with probability ≥ 1 − α per point, not with certainty (module docstring).
PROBABILISTIC = True
#: How tables and figures should name this certificate.
LABEL = "randomized smoothing (probabilistic, 1−α)"

#: Cohen et al.'s defaults for CERTIFY on their image experiments (n0 = 100, n = 100 000, α = 0.001).
N0, N, ALPHA, BATCH = 100, 100_000, 0.001, 1000


def _device(model, x: torch.Tensor) -> torch.device:
    p = next(iter(model.parameters()), None)
    return p.device if p is not None else x.device


def _default_generator(device: torch.device) -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed(0)
    return g


def noisy_inputs(x: torch.Tensor, sigma: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """x + σ·N(0, I), noise in x's dtype and on x's device: Cohen et al. 2019's training of the base classifier by
    Gaussian data augmentation (the ordinary cross-entropy on inputs corrupted by N(0, σ² I), the same σ as at
    certification). ``generator`` None draws from torch's global RNG."""
    noise = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
    return x + sigma * noise


@torch.no_grad()
def sample_counts(model, x: torch.Tensor, m: int, sigma: float, batch: int, generator: torch.Generator,
                  num_classes: int | None = None) -> torch.Tensor:
    """(B, K) counts of f(x_i + δ) = c over m draws δ ~ N(0, σ² I) per point (Cohen et al., SAMPLEUNDERNOISE).

    The B·m forward passes are laid out point-major (row r is point r // m) and run ``batch`` rows at a time; each
    chunk's noise is one ``torch.randn`` from ``generator`` in x's dtype. ``num_classes`` None: the width of the
    model's output. No Python loop over points.
    """
    B = x.shape[0]
    shape = tuple(x.shape[1:])
    total = B * int(m)
    batch = max(1, int(batch))
    K = num_classes
    counts = None
    for start in range(0, total, batch):
        rows = min(batch, total - start)
        pts = torch.arange(start, start + rows, device=x.device) // m
        noise = torch.randn((rows,) + shape, generator=generator, dtype=x.dtype, device=x.device)
        logits = model(x[pts] + sigma * noise)
        if counts is None:
            K = logits.shape[1] if K is None else int(K)
            if logits.shape[1] > K:
                raise ValueError(f"the model has {logits.shape[1]} outputs but num_classes={K}")
            counts = torch.zeros(B * K, dtype=torch.long, device=x.device)
        counts += torch.bincount(pts * K + logits.argmax(1).to(x.device), minlength=B * K)
    if counts is None:  # nothing sampled (B == 0 or m == 0)
        return torch.zeros(B, K or 0, dtype=torch.long, device=x.device)
    return counts.reshape(B, K)


def lower_confidence_bound(k, n: int, alpha: float):
    """One-sided (1 − α) Clopper–Pearson lower confidence bound on a binomial proportion from k successes in n
    trials (Clopper & Pearson 1934): the α quantile of Beta(k, n − k + 1), 0 where k = 0. Computed as the lower end
    of statsmodels' two-sided "beta" (exact) interval at level 2α, as in Cohen et al.'s ``core.py``
    (``_lower_confidence_bound``). ``k``: an int or an array; returns float64 numpy values."""
    import numpy as np
    from statsmodels.stats.proportion import proportion_confint

    k = np.asarray(k, dtype=np.float64)
    return np.asarray(proportion_confint(k, n, alpha=2 * alpha, method="beta")[0], dtype=np.float64)


def certify(model, x: torch.Tensor, y: torch.Tensor | None = None, *, sigma: float, n0: int = N0, n: int = N,
            alpha: float = ALPHA, batch: int = BATCH, generator: torch.Generator | None = None,
            num_classes: int | None = None) -> dict:
    """Cohen et al. 2019's CERTIFY (their pseudocode; Theorem 1 with p_B = 1 − p_A; guarantee: Proposition 2) for a
    batch of points.

    For each point: ĉ_A = argmax of the counts over ``n0`` selection samples (ties: the lowest class); k = the
    count of ĉ_A over ``n`` fresh estimation samples; p_A_lower = :func:`lower_confidence_bound` (k, n, α); abstain
    if p_A_lower < 1/2, else radius R = σ Φ⁻¹(p_A_lower) (Φ⁻¹: :data:`scipy.stats.norm.ppf`). The radius is that
    of the smoothed classifier around **its own prediction**: whether the prediction is the label is the caller's
    business (:func:`certified_radius` does it for the harness). The radius holds with probability ≥ 1 − α
    (module docstring), it is not sound.

    Args:
        model: the base classifier f, called on batches shaped like ``x`` (logits (rows, K)); run under no_grad in
            its current mode (put it in eval mode first).
        x: (B, ...) points; moved to the model's device, kept in their dtype (float32 or float64), which is the
            noise's dtype too.
        y: unused (accepted so the call reads like the other certifiers'); see :func:`certified_radius`.
        sigma: the noise level σ > 0.
        n0, n: selection and estimation samples per point.
        alpha: the failure probability α of each certificate.
        batch: forward passes per chunk (noisy inputs evaluated at once).
        generator: a :class:`torch.Generator` on the model's device; default a fresh one seeded 0. It is advanced.
        num_classes: K; default the width of the model's output.

    Returns:
        dict of per-point tensors on x's device — ``prediction`` (long, ĉ_A, −1 where it abstains),
        ``selected`` (long, ĉ_A even where it abstains), ``counts`` (long, k: estimation samples on ĉ_A),
        ``p_lower`` (float64, p_A_lower), ``radius`` (float64, σ Φ⁻¹(p_A_lower); **0.0 where it abstains**, as in
        Cohen et al.'s code: no certificate, and not > ρ for any ρ ≥ 0), ``abstain`` (bool) — and ``time_s``.
    """
    from scipy.stats import norm

    if not sigma > 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    if n0 < 1 or n < 1:
        raise ValueError(f"n0 and n must be ≥ 1, got n0={n0}, n={n}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    t0 = time.perf_counter()
    out_device = x.device
    device = _device(model, x)
    x = x.to(device)
    if generator is None:
        generator = _default_generator(device)
    B = x.shape[0]
    sel = sample_counts(model, x, n0, sigma, batch, generator, num_classes)
    K = sel.shape[1]
    est = sample_counts(model, x, n, sigma, batch, generator, K)
    selected = sel.argmax(1)  # first maximal index on ties
    k = est.gather(1, selected.reshape(B, 1)).reshape(B)
    p_lower = torch.from_numpy(lower_confidence_bound(k.cpu().numpy(), n, alpha)).reshape(B)
    abstain = p_lower < 0.5
    radius = torch.from_numpy(sigma * norm.ppf(p_lower.numpy())).to(torch.float64).reshape(B)
    radius = torch.where(abstain, torch.zeros_like(radius), radius)
    selected = selected.to(out_device)
    abstain = abstain.to(out_device)
    prediction = torch.where(abstain, torch.full_like(selected, -1), selected)
    return {"prediction": prediction, "selected": selected, "counts": k.to(out_device),
            "p_lower": p_lower.to(out_device), "radius": radius.to(out_device), "abstain": abstain,
            "time_s": time.perf_counter() - t0}


def certified_radius(model, x: torch.Tensor, y: torch.Tensor, *, sigma: float, n0: int = N0, n: int = N,
                     alpha: float = ALPHA, batch: int = BATCH, generator: torch.Generator | None = None,
                     targets=None, steps=None, num_classes: int | None = None) -> dict:
    """:func:`certify` in the shape of the baselines' registry (``sorobust.certify.radius_function``).

    x is cast to the model's parameter dtype first (as ``crown.certified_radius`` does), so the noise is in the
    model's dtype. ``radius`` is the smoothed classifier's radius σ Φ⁻¹(p_A_lower) where its prediction equals
    ``y``, and 0.0 where it abstains or predicts another class (not certified at any ρ ≥ 0, the rule of
    :func:`sorobust.summaries.certified_at`); ``target`` is the smoothed prediction (−1: abstained).
    ``targets`` and ``steps`` are accepted for the registry's call and ignored (Cohen et al.'s certificate has no
    target classes and no bisection). Extra keys: ``prediction``, ``abstain``, ``p_lower``, ``counts``. The radii
    are **probabilistic** (each holds with probability ≥ 1 − α; :data:`PROBABILISTIC`, :data:`LABEL`).
    """
    p = next(iter(model.parameters()), None)
    if p is not None and x.is_floating_point():
        x = x.to(p.dtype)
    r = certify(model, x, sigma=sigma, n0=n0, n=n, alpha=alpha, batch=batch, generator=generator,
                num_classes=num_classes)
    correct = r["prediction"] == y.to(r["prediction"].device)
    radius = torch.where(correct, r["radius"], torch.zeros_like(r["radius"]))
    return {"radius": radius, "target": r["prediction"], "time_s": r["time_s"], "prediction": r["prediction"],
            "abstain": r["abstain"], "p_lower": r["p_lower"], "counts": r["counts"]}


def predict(model, x: torch.Tensor, *, sigma: float, n: int = N, alpha: float = ALPHA, batch: int = BATCH,
            generator: torch.Generator | None = None, num_classes: int | None = None) -> dict:
    """Cohen et al. 2019's PREDICT (their pseudocode; guarantee: Proposition 1): the smoothed classifier's
    prediction, wrong with probability ≤ α.

    Counts over ``n`` noise samples per point; with n_A, n_B the top two counts (classes ĉ_A, ĉ_B; ties: lowest
    class first), return ĉ_A if the two-sided binomial test of n_A successes in n_A + n_B trials against p = 1/2
    (:func:`scipy.stats.binomtest`) has p-value ≤ α, else abstain (−1). Sampling as in :func:`certify`.

    Returns per-point tensors on x's device ``prediction`` (long, −1 where it abstains), ``p_value`` (float64),
    ``abstain`` (bool), and ``time_s``.
    """
    from scipy.stats import binomtest

    t0 = time.perf_counter()
    out_device = x.device
    device = _device(model, x)
    x = x.to(device)
    if generator is None:
        generator = _default_generator(device)
    counts = sample_counts(model, x, n, sigma, batch, generator, num_classes).cpu()
    B = x.shape[0]
    if counts.shape[1] >= 2:
        top = counts.topk(2, dim=1, sorted=True).values  # n_A ≥ n_B: the two largest counts
        nA, nB = top[:, 0], top[:, 1]
        cA = counts.argmax(1)  # the lowest class among tied maxima, as in certify
    else:
        nA, nB, cA = counts[:, 0], torch.zeros(B, dtype=torch.long), torch.zeros(B, dtype=torch.long)
    p_value = torch.tensor([binomtest(int(a), int(a + b), 0.5).pvalue if a + b > 0 else 1.0
                            for a, b in zip(nA.tolist(), nB.tolist())], dtype=torch.float64)
    abstain = p_value > alpha
    prediction = torch.where(abstain, torch.full_like(cA, -1), cA)
    return {"prediction": prediction.to(out_device), "p_value": p_value.to(out_device),
            "abstain": abstain.to(out_device), "time_s": time.perf_counter() - t0}
