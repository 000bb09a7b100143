"""Tests for sorobust.activations: σ', σ'' against autograd, global constants against dense grid search, and
interval ranges of σ', σ'' against dense sampling (all float64, independent references)."""

import math

import numpy as np
import pytest
import torch

from sorobust import activations
from sorobust.errors import SorobustError

SMOOTH = ("sigmoid", "tanh", "softplus")
EPS = float(torch.finfo(torch.float64).eps)
# slack for the reference's own rounding (a few ulps of the value), far below what any widening should cover
REF_ULPS = 8 * EPS


pytestmark = pytest.mark.usefixtures("float64_single_thread")


def _autograd_derivs(fn, z):
    """σ'(z), σ''(z) by autograd (elementwise σ, so the gradient of the sum is the derivative)."""
    z = z.clone().requires_grad_(True)
    (d1,) = torch.autograd.grad(fn(z).sum(), z, create_graph=True)
    (d2,) = torch.autograd.grad(d1.sum(), z)
    return d1.detach(), d2.detach()


# Independent reference functions (plain math, not torch): σ as a Python function of a float.
_REF_FN = {
    "sigmoid": lambda z: 1.0 / (1.0 + math.exp(-z)),
    "tanh": math.tanh,
    "softplus": lambda z: math.log1p(math.exp(z)) if z < 30 else z + math.log1p(math.exp(-z)),
}


@pytest.mark.parametrize("name", SMOOTH)
def test_derivatives_match_autograd(name):
    act = activations.get(name)
    z = torch.linspace(-30, 30, 6001, dtype=torch.float64)
    z = torch.cat([z, torch.tensor([0.0, 1e-8, -1e-8, 0.6585, -1.317, 1.317, 40.0, -40.0])])
    a1, a2 = _autograd_derivs(act.fn, z)
    d1, d2 = act.d1(z), act.d2(z)
    assert d1.dtype == torch.float64 and d2.dtype == torch.float64
    torch.testing.assert_close(d1, a1, rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(d2, a2, rtol=1e-9, atol=1e-14)


@pytest.mark.parametrize("name", SMOOTH)
def test_fn_is_the_named_function(name):
    act = activations.get(name)
    zs = [-20.0, -3.0, -0.5, 0.0, 0.3, 2.0, 15.0]
    got = act.fn(torch.tensor(zs)).tolist()
    want = [_REF_FN[name](z) for z in zs]
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-300)


@pytest.mark.parametrize("name", SMOOTH)
def test_finite_difference_derivatives(name):
    """σ' and σ'' against central finite differences of an independent math-library σ."""
    act = activations.get(name)
    f = _REF_FN[name]
    zs = np.linspace(-6, 6, 49)
    e = 1e-4
    fd1 = np.array([(f(z + e) - f(z - e)) / (2 * e) for z in zs])
    fd2 = np.array([(f(z + e) - 2 * f(z) + f(z - e)) / e**2 for z in zs])
    zt = torch.tensor(zs)
    np.testing.assert_allclose(act.d1(zt).numpy(), fd1, atol=1e-7)
    np.testing.assert_allclose(act.d2(zt).numpy(), fd2, atol=1e-6)


# the grid: step 1e-4 on [-30, 30] (600001 points, includes 0)
def _grid():
    return torch.linspace(-30, 30, 600001, dtype=torch.float64)


@pytest.mark.parametrize("name", SMOOTH)
def test_global_constants_match_grid_search(name):
    act = activations.get(name)
    z = _grid()
    # derivatives on the grid from autograd (independent of act.d1/act.d2)
    d1, d2 = _autograd_derivs(act.fn, z)
    sup_abs_d1 = d1.abs().max().item()
    d2_max, d2_min = d2.max().item(), d2.min().item()
    # the constants equal the grid sup/inf
    assert abs(act.g - sup_abs_d1) <= 1e-6, (act.g, sup_abs_d1)
    assert abs(act.h_hi - d2_max) <= 1e-6, (act.h_hi, d2_max)
    assert abs(act.h_lo - d2_min) <= 1e-6, (act.h_lo, d2_min)
    assert abs(act.h - max(abs(d2_max), abs(d2_min))) <= 1e-6
    # and the grid never goes beyond them (also with the package's own σ', σ'')
    assert sup_abs_d1 <= act.g
    assert d2_max <= act.h_hi
    assert d2_min >= act.h_lo
    assert act.d1(z).abs().max().item() <= act.g
    assert act.d2(z).max().item() <= act.h_hi
    assert act.d2(z).min().item() >= act.h_lo
    assert act.h_lo <= 0.0 <= act.h_hi


def test_constants_closed_forms():
    """Closed forms derived independently: sigmoid'' ∈ ±1/(6√3), tanh'' ∈ ±4/(3√3), softplus'' ∈ [0, 1/4]."""
    s3 = math.sqrt(3)
    expect = {
        "sigmoid": (0.25, -1 / (6 * s3), 1 / (6 * s3)),
        "tanh": (1.0, -4 / (3 * s3), 4 / (3 * s3)),
        "softplus": (1.0, 0.0, 0.25),
    }
    for name, (g, lo, hi) in expect.items():
        act = activations.get(name)
        assert act.g == pytest.approx(g, rel=1e-14, abs=1e-15)
        assert act.h_lo == pytest.approx(lo, rel=1e-14, abs=1e-15)
        assert act.h_hi == pytest.approx(hi, rel=1e-14, abs=1e-15)


def _random_intervals(rng, n, max_width, centre_scale=8.0):
    centres = rng.uniform(-centre_scale, centre_scale, n)
    widths = np.exp(rng.uniform(np.log(1e-4), np.log(max_width), n))
    lo = centres - widths * rng.uniform(0, 1, n)
    return lo, lo + widths


def _special_intervals(act):
    """Intervals that contain, touch or just miss the critical points of σ' and σ''."""
    out = []
    for c in tuple(act.crit1) + tuple(act.crit2) + (0.0,):
        out += [(c - 0.3, c + 0.4), (c, c + 0.5), (c - 0.5, c), (c + 1e-3, c + 0.2), (c - 0.2, c - 1e-3),
                (c - 1e-6, c + 1e-6)]
    out += [(-1.5, 1.5), (-0.8, 0.8), (-1.4, -1.2), (1.2, 1.4)]
    return out


def _accurate_derivs(name, z):
    """σ'(z), σ''(z) from cancellation-free closed forms (relative error a few ulps everywhere):

    sigmoid: σ' = e/(1+e)² with e = exp(−|z|), σ'' = −σ'·tanh(z/2)   (since 1 − 2s = −tanh(z/2));
    tanh:    σ' = sech² z = 4e/(1+e)² with e = exp(−2|z|), σ'' = −2 tanh(z) sech² z;
    softplus: σ' = 1/(1+exp(−z)) (no cancellation), σ'' = e/(1+e)² with e = exp(−|z|).
    """
    if name == "sigmoid":
        e = torch.exp(-z.abs())
        d1 = e / (1 + e) ** 2
        return d1, -d1 * torch.tanh(z / 2)
    if name == "tanh":
        e = torch.exp(-2 * z.abs())
        sech2 = 4 * e / (1 + e) ** 2
        return sech2, -2 * torch.tanh(z) * sech2
    if name == "softplus":
        e = torch.exp(-z.abs())
        return 1 / (1 + torch.exp(-z)), e / (1 + e) ** 2
    raise AssertionError(name)


def test_accurate_reference_formulas_against_mpmath():
    """The float64 references used below agree with 50-digit arithmetic to a few ulps (tails included)."""
    mp = pytest.importorskip("mpmath")
    mp.mp.dps = 50
    fns = {
        "sigmoid": lambda z: 1 / (1 + mp.e ** (-z)),
        "tanh": mp.tanh,
        "softplus": lambda z: mp.log(1 + mp.e**z),
    }
    zs = [-29.5, -20.0, -12.3, -7.8, -3.0, -1.3169578969248166, -0.6585, -1e-3, 0.0, 1e-3, 0.6585, 1.3169578969248166,
          3.0, 6.2, 7.8, 12.3, 20.0, 29.5]
    for name, f in fns.items():
        a1, a2 = _accurate_derivs(name, torch.tensor(zs))
        for i, z in enumerate(zs):
            t1, t2 = mp.diff(f, mp.mpf(z), 1), mp.diff(f, mp.mpf(z), 2)
            assert abs(mp.mpf(a1[i].item()) - t1) <= 8 * EPS * abs(t1) + 1e-40, (name, z)
            assert abs(mp.mpf(a2[i].item()) - t2) <= 8 * EPS * abs(t2) + 1e-40, (name, z)


def _dense_range(fun, lo, hi, n=20001):
    t = torch.linspace(0, 1, n, dtype=torch.float64)
    pts = torch.as_tensor(lo)[:, None] + (torch.as_tensor(hi) - torch.as_tensor(lo))[:, None] * t[None, :]
    v = fun(pts)
    return v.min(1).values, v.max(1).values


def _check_contains(lo, hi, rmin, rmax, dmin, dmax):
    bad_lo = (rmin > dmin + REF_ULPS * dmin.abs()).nonzero().flatten().tolist()
    bad_hi = (rmax < dmax - REF_ULPS * dmax.abs()).nonzero().flatten().tolist()
    assert not bad_lo, [(float(lo[i]), float(hi[i]), "range_lo", rmin[i].item(), "true_min", dmin[i].item())
                        for i in bad_lo[:4]]
    assert not bad_hi, [(float(lo[i]), float(hi[i]), "range_hi", rmax[i].item(), "true_max", dmax[i].item())
                        for i in bad_hi[:4]]


@pytest.mark.parametrize("name", SMOOTH)
@pytest.mark.parametrize("which", ["d1", "d2"])
def test_interval_ranges_contain_and_are_tight(name, which):
    act = activations.get(name)
    rng = np.random.default_rng(1234 + len(name) + (which == "d2"))
    lo, hi = _random_intervals(rng, 400, max_width=1.5)
    spec = np.array(_special_intervals(act))
    lo = np.concatenate([lo, spec[:, 0]])
    hi = np.concatenate([hi, spec[:, 1]])
    lo_t, hi_t = torch.tensor(lo), torch.tensor(hi)

    def deriv(p):  # accurate derivative, independent of act.d1 / act.d2
        return _accurate_derivs(name, p)[0 if which == "d1" else 1]

    dmin, dmax = _dense_range(deriv, lo_t, hi_t)
    rmin, rmax = (act.d1_range if which == "d1" else act.d2_range)(lo_t, hi_t)
    assert rmin.shape == lo_t.shape and rmax.shape == lo_t.shape
    # containment: every dense value is inside the reported range
    _check_contains(lo, hi, rmin, rmax, dmin, dmax)
    # tightness: within 1e-6 of the dense extremes
    assert (dmin - rmin).max().item() <= 1e-6
    assert (rmax - dmax).max().item() <= 1e-6


@pytest.mark.parametrize("name", SMOOTH)
def test_interval_ranges_contain_wide_intervals(name):
    """Wide intervals (up to 40 wide, far tails included): containment at 1000 dense points."""
    act = activations.get(name)
    rng = np.random.default_rng(99)
    lo, hi = _random_intervals(rng, 300, max_width=40.0, centre_scale=25.0)
    lo_t, hi_t = torch.tensor(lo), torch.tensor(hi)
    for j, rng_fn in ((0, act.d1_range), (1, act.d2_range)):
        dmin, dmax = _dense_range(lambda p: _accurate_derivs(name, p)[j], lo_t, hi_t)
        rmin, rmax = rng_fn(lo_t, hi_t)
        _check_contains(lo, hi, rmin, rmax, dmin, dmax)
        # the range never leaves the global bounds
        if j == 1:
            assert bool((rmin >= act.h_lo).all()) and bool((rmax <= act.h_hi).all())
        else:
            assert bool((rmin >= 0).all()) and bool((rmax <= act.g).all())


@pytest.mark.parametrize("name", SMOOTH)
def test_interval_ranges_degenerate_interval(name):
    """A point interval [z, z] gives (almost exactly) the value at z."""
    act = activations.get(name)
    z = torch.tensor([-5.0, -1.317, -0.3, 0.0, 0.6585, 2.0, 9.0])
    for fun, rng_fn in ((act.d1, act.d1_range), (act.d2, act.d2_range)):
        rmin, rmax = rng_fn(z, z)
        v = fun(z)
        assert bool((rmin <= v).all()) and bool((v <= rmax).all())
        torch.testing.assert_close(rmin, v, rtol=1e-10, atol=1e-15)
        torch.testing.assert_close(rmax, v, rtol=1e-10, atol=1e-15)


def test_relu_require_smooth_raises():
    relu = activations.get("relu")
    assert relu.smooth is False
    with pytest.raises(SorobustError):
        relu.require_smooth()
    with pytest.raises(SorobustError):
        relu.d2_range(torch.tensor([-1.0]), torch.tensor([1.0]))
    for name in SMOOTH:
        activations.get(name).require_smooth()  # no error


def test_unknown_activation_one_line_error():
    with pytest.raises(SorobustError) as ei:
        activations.get("bogus")
    msg = str(ei.value)
    assert "\n" not in msg and msg.strip() == msg and msg
    assert "bogus" in msg
    for name in ("sigmoid", "tanh", "softplus"):
        assert name in msg
