"""Real-MNIST checks at small scale (CPU, seconds): a briefly trained softplus MLP, certified with the reference
solver and the default one, and attacked. Soundness is checked against attacks, never against stored numbers."""


import pytest
import torch

from sorobust import attacks, curvature, data
from sorobust.certify import crc
from sorobust.train import train_standard


@pytest.fixture(scope="module")
def setup(data_dir, one_thread):
    model, hist = train_standard("mlp-2x128-softplus", epochs=2, limit=10000, data_dir=data_dir, progress=False)
    X, y = data.load_tensors("mnist", "test", data_dir=data_dir, limit=60)
    return model, X, y, hist


def test_trained_model_is_reasonable(setup):
    _, _, _, hist = setup
    assert hist[-1]["test_accuracy"] > 0.85  # 10000 training images, two epochs


def test_default_solver_matches_reference_solver(setup):
    model, X, y, _ = setup
    cb = curvature.CurvatureBounds(model)
    ref = crc(model, X, y, targets="runner-up", solver="mm", bounds_cache=cb)
    fast = crc(model, X, y, targets="runner-up", solver="kkt", bounds_cache=cb)
    assert (fast.certificate >= ref.certificate_reference - 1e-4).all()
    assert (fast.certificate >= ref.certificate - 1e-4).all()
    assert fast.iterations.sum() * 5 < ref.iterations.sum()


def test_certificates_sound_against_attacks(setup):
    model, X, y, _ = setup
    res = crc(model, X, y, targets="all")
    correct = model(X).argmax(1) == y
    for rho in (0.5, 1.0, 2.0):
        pgd = attacks.pgd_l2(model, X, y, rho, targets="all", steps=300, step_size=rho / 50, clamp=None,
                             generator=torch.Generator().manual_seed(0))
        so = attacks.second_order(model, X, y, rho, targets="all")
        for adv in (pgd, so):
            broken = correct & (adv.pred != y)
            assert (res.certificate[broken] <= adv.distance[broken] + 1e-5).all()
    # the attacks are not vacuous: some correct points are broken at the largest radius
    assert (correct & (pgd.pred != y)).sum() > 0
