"""Randomized smoothing (Cohen, Rosenfeld & Kolter 2019) against independent references.

* A two-class linear classifier f(x) = argmax(Wx + b) has a closed-form smoothed classifier: with w = w_1 − w_0,
  the class of x has probability p_A = Φ(|w·x + b'| / (σ‖w‖)) under N(0, σ² I) noise (b' = b_1 − b_0), and
  Cohen's radius at the true p_A, σ Φ⁻¹(p_A), is |w·x + b'| / ‖w‖, the exact distance to the decision boundary.
  CERTIFY's radius must lie below it (except with probability α per point), and above σ Φ⁻¹ of the
  Clopper–Pearson bound (scipy.stats.beta) at a count a few binomial standard deviations below n·p_A.
* A point on the boundary (p_A = 1/2) abstains.
* Counts, selection, bound and radius against a brute-force loop over single samples (scipy for the bound).
"""

import copy
import math

import numpy as np
import pytest
import torch
from scipy.stats import beta, binom, norm
from torch import nn

from sorobust import summaries
from sorobust.certify import smoothing


def linear_model(d, k, seed, dtype=torch.float64):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(d, k)).to(dtype)


def boundary(model):
    """(w, b') of the two-class model's margin z_1 − z_0 = w·x + b'."""
    W, b = model[1].weight.detach(), model[1].bias.detach()
    return W[1] - W[0], b[1] - b[0]


def points_at_distances(model, dists, seed, dtype=torch.float64):
    """Points whose distance to the decision boundary is exactly ``dists`` (signs alternating), built by moving
    random points onto the hyperplane and then along its unit normal."""
    w, b = boundary(model)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(len(dists), w.numel(), generator=g, dtype=dtype)
    u = w / w.norm()
    on = x - ((x @ w + b) / w.norm())[:, None] * u[None, :]
    signs = torch.tensor([(-1.0) ** i for i in range(len(dists))], dtype=dtype)
    return on + (signs * torch.tensor(dists, dtype=dtype))[:, None] * u[None, :]


def test_lower_confidence_bound_is_clopper_pearson():
    n, alpha = 1000, 1e-3
    k = np.array([0, 1, 17, 500, 999, 1000])
    ours = smoothing.lower_confidence_bound(k, n, alpha)
    ref = np.where(k == 0, 0.0, beta.ppf(alpha, np.maximum(k, 1), n - k + 1))  # Clopper & Pearson 1934
    np.testing.assert_allclose(ours, ref, rtol=1e-12, atol=0)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_linear_closed_form(one_thread, dtype):
    d, sigma, n0, n, alpha = 6, 0.5, 100, 50_000, 1e-9
    model = linear_model(d, 2, seed=3, dtype=dtype)
    model64 = copy.deepcopy(model).double()  # the same weights, exactly
    w, b = boundary(model64)
    dists = [0.35, 0.5, 0.8, 1.0, 1.3, 1.7, 0.4, 0.6, 0.9, 1.1]  # p_A from Φ(0.7) ≈ 0.76 to Φ(3.4) ≈ 0.9997
    x = points_at_distances(model64, dists, seed=4).to(dtype)
    xd = x.double()
    exact = ((xd @ w + b).abs() / w.norm()).numpy()
    np.testing.assert_allclose(exact, dists, rtol=1e-5 if dtype == torch.float32 else 1e-12)
    label = ((xd @ w + b) > 0).long()
    p_true = norm.cdf(exact / sigma)  # Cohen et al.: σ Φ⁻¹(p_A) = exact distance
    r = smoothing.certify(model, x, sigma=sigma, n0=n0, n=n, alpha=alpha, batch=4096,
                          generator=torch.Generator().manual_seed(11))
    assert r["radius"].dtype == torch.float64 and r["prediction"].dtype == torch.long
    # every point predicted: its own class (p_A ≥ 0.76, α = 1e-9: abstaining or a wrong class is astronomically rare)
    assert torch.equal(r["prediction"], label)
    radius = r["radius"].numpy()
    # soundness with probability 1 − α per point: 10 points at α = 1e-9, no violation allowed
    assert (radius <= exact).all(), (radius, exact)
    # tightness: the Clopper–Pearson bound at a count 6 binomial standard deviations below n·p_A
    k_low = np.floor(n * p_true - 6 * np.sqrt(n * p_true * (1 - p_true)))
    p_low = beta.ppf(alpha, k_low, n - k_low + 1)
    assert (p_low > 0.5).all()
    assert (radius >= sigma * norm.ppf(p_low)).all(), (radius, sigma * norm.ppf(p_low))
    # and the counts themselves within 6 standard deviations of n·p_A
    k = r["counts"].numpy()
    assert (np.abs(k - n * p_true) <= 6 * np.sqrt(n * p_true * (1 - p_true)) + 1).all()


def test_boundary_point_abstains(one_thread):
    sigma, n, alpha = 0.25, 20_000, 1e-6
    model = linear_model(5, 2, seed=5)
    x = points_at_distances(model, [0.0, 0.0, 1.0], seed=6)
    w, b = boundary(model)
    assert (x[:2] @ w + b).abs().max() < 1e-12
    r = smoothing.certify(model, x, sigma=sigma, n0=100, n=n, alpha=alpha, batch=5000)
    # p_A = 1/2: P(p_A_lower ≥ 1/2) ≤ α
    assert r["prediction"][:2].tolist() == [-1, -1]
    assert r["abstain"].tolist() == [True, True, False]
    assert (r["p_lower"][:2] < 0.5).all() and (r["radius"][:2] == 0).all()
    assert r["radius"][2] > 0
    # the harness's rule: abstained / wrong-class points are not certified at any ρ ≥ 0
    y = ((x @ w + b) > 0).long()
    y_wrong = 1 - y
    for yy in (y, y_wrong):
        c = smoothing.certified_radius(model, x, yy, sigma=sigma, n0=100, n=n, alpha=alpha, batch=5000)
        assert set(c) >= {"radius", "target", "time_s", "p_lower", "prediction", "abstain"}
        assert c["target"].dtype == torch.long and c["target"][:2].tolist() == [-1, -1]
        correct = c["prediction"] == yy
        cert = summaries.certified_at(correct, c["radius"], None, 0.0)
        assert not cert[:2].any()
        assert bool(cert[2]) == bool(yy[2] == y[2])
        assert c["radius"][2] == (r["radius"][2] if yy[2] == y[2] else 0.0)


def test_deterministic_and_seeded(one_thread):
    model = linear_model(4, 3, seed=7)
    x = torch.randn(6, 4, generator=torch.Generator().manual_seed(8), dtype=torch.float64) * 0.3
    kw = dict(sigma=1.0, n0=50, n=3000, alpha=1e-3, batch=777)
    a = smoothing.certify(model, x, generator=torch.Generator().manual_seed(1), **kw)
    b = smoothing.certify(model, x, generator=torch.Generator().manual_seed(1), **kw)
    c = smoothing.certify(model, x, generator=torch.Generator().manual_seed(2), **kw)
    dflt = smoothing.certify(model, x, **kw)
    zero = smoothing.certify(model, x, generator=torch.Generator().manual_seed(0), **kw)
    for key in ("prediction", "counts", "p_lower", "radius", "abstain"):
        assert torch.equal(a[key], b[key]), key
        assert torch.equal(dflt[key], zero[key]), key
    assert not torch.equal(a["counts"], c["counts"])


def brute_force(model, x, sigma, n0, n, alpha, batch, seed):
    """Cohen's CERTIFY by hand: the documented noise layout (point-major rows, one randn per chunk of ``batch``
    rows, selection phase first) re-drawn from an equal generator, then one forward pass per sample, counts in a
    dict, ties to the lowest class, the bound from scipy.stats.beta and the radius from scipy.stats.norm."""
    g = torch.Generator().manual_seed(seed)
    B = x.shape[0]

    def counts(m):
        c = [dict() for _ in range(B)]
        rows = B * m
        for start in range(0, rows, batch):
            noise = torch.randn((min(batch, rows - start),) + tuple(x.shape[1:]), generator=g, dtype=x.dtype)
            for j in range(noise.shape[0]):
                p = (start + j) // m
                logits = model(x[p:p + 1] + sigma * noise[j:j + 1])[0].tolist()
                cls = max(range(len(logits)), key=lambda i: (logits[i], -i))
                c[p][cls] = c[p].get(cls, 0) + 1
        return c

    sel, est = counts(n0), counts(n)
    out = []
    for p in range(B):
        cA = max(sel[p], key=lambda cls: (sel[p][cls], -cls))
        k = est[p].get(cA, 0)
        lo = 0.0 if k == 0 else float(beta.ppf(alpha, k, n - k + 1))
        out.append((cA, k, lo, -1 if lo < 0.5 else cA, 0.0 if lo < 0.5 else sigma * float(norm.ppf(lo))))
    return out


def test_counts_match_brute_force(one_thread):
    model = linear_model(3, 3, seed=9)
    x = torch.randn(3, 1, 3, generator=torch.Generator().manual_seed(10), dtype=torch.float64)
    kw = dict(sigma=0.7, n0=7, n=40, alpha=0.05, batch=9)  # chunks straddle points
    r = smoothing.certify(model, x, generator=torch.Generator().manual_seed(12), **kw)
    ref = brute_force(model, x, seed=12, **kw)
    assert r["selected"].tolist() == [t[0] for t in ref]
    assert r["counts"].tolist() == [t[1] for t in ref]
    np.testing.assert_allclose(r["p_lower"].numpy(), [t[2] for t in ref], rtol=1e-12)
    assert r["prediction"].tolist() == [t[3] for t in ref]
    np.testing.assert_allclose(r["radius"].numpy(), [t[4] for t in ref], rtol=1e-12)


def test_sample_counts_total_and_classes(one_thread):
    model = linear_model(4, 5, seed=13)
    x = torch.randn(4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(14))
    c = smoothing.sample_counts(model, x, 123, 0.5, 50, torch.Generator().manual_seed(0))
    assert c.shape == (4, 5) and (c.sum(1) == 123).all()
    c7 = smoothing.sample_counts(model, x, 123, 0.5, 50, torch.Generator().manual_seed(0), num_classes=7)
    assert torch.equal(c7[:, :5], c) and (c7[:, 5:] == 0).all()
    with pytest.raises(ValueError):
        smoothing.sample_counts(model, x, 10, 0.5, 50, torch.Generator().manual_seed(0), num_classes=3)


def test_noisy_inputs_statistics():
    x = torch.full((200, 500), 3.0, dtype=torch.float64)
    z = smoothing.noisy_inputs(x, 0.25, torch.Generator().manual_seed(0))
    assert z.dtype == x.dtype and z.shape == x.shape
    e = ((z - x) / 0.25).flatten()
    N = e.numel()
    assert abs(float(e.mean())) < 5 / math.sqrt(N)
    assert abs(float(e.var()) - 1) < 5 * math.sqrt(2 / N)
    assert torch.equal(z, smoothing.noisy_inputs(x, 0.25, torch.Generator().manual_seed(0)))
    assert smoothing.noisy_inputs(x.float(), 0.25, torch.Generator().manual_seed(0)).dtype == torch.float32


def test_predict(one_thread):
    sigma, n, alpha = 0.25, 4000, 1e-6
    model = linear_model(5, 2, seed=5)
    x = points_at_distances(model, [0.0, 0.5, 0.5], seed=6)
    w, b = boundary(model)
    r = smoothing.predict(model, x, sigma=sigma, n=n, alpha=alpha, batch=3000,
                          generator=torch.Generator().manual_seed(3))
    # on the boundary the two-sided test rejects p = 1/2 with probability ≤ α; at distance 2σ (p_A = Φ(2)) it
    # rejects with overwhelming probability
    assert r["prediction"].tolist() == [-1] + ((x[1:] @ w + b) > 0).long().tolist()
    # p-values of the exact two-sided test at p = 1/2 (symmetric: twice the smaller tail) from scipy.stats.binom
    g = torch.Generator().manual_seed(3)
    c = smoothing.sample_counts(model, x, n, sigma, 3000, g)
    lo = c.min(1).values.numpy()
    ref = np.minimum(1.0, 2 * binom.cdf(lo, n, 0.5))
    np.testing.assert_allclose(r["p_value"].numpy(), ref, rtol=1e-8, atol=1e-300)
