"""AutoAttack ℓ2 (Croce & Hein 2020, through ``pyautoattack``): the empirical upper bound of the headline table.

Checked against a closed form and against the certificate:
- on a linear classifier whose ℓ2 ball stays inside the box, the distance to class j is
  (z_y − z_j)/‖w_y − w_j‖, so the points with min_j of it clearly below ρ must be broken and those above ρ cannot be;
- on a briefly trained MNIST net, every success is re-verified here in float64 (distance ≤ ρ, another class), and
  no point that the sound all-class CRC certifies beyond ρ is broken (certified ≤ robust ≤ empirical).
"""

import pytest
import torch

from sorobust import attacks, data
from sorobust.certify import crc
from sorobust.train import train_standard

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("version", ["standard", "apgd"])
def test_linear_classifier_closed_form(version):
    g = torch.Generator().manual_seed(0)
    lin = torch.nn.Linear(64, 10).double()
    with torch.no_grad():
        lin.weight.copy_(torch.randn(10, 64, generator=g, dtype=torch.float64))
        lin.bias.copy_(torch.randn(10, generator=g, dtype=torch.float64))
    x = 0.5 + 0.03 * torch.randn(200, 64, generator=g, dtype=torch.float64)
    with torch.no_grad():
        z = lin(x)
        y = z.argmax(1)  # every point correctly classified by construction
    W = lin.weight.detach()
    gap = z.gather(1, y[:, None]) - z  # (B, 10) z_y − z_j
    wdiff = (W[y][:, None, :] - W[None, :, :]).norm(dim=2)  # ‖w_y − w_j‖
    dist = torch.where(wdiff > 0, gap / wdiff.clamp(min=1e-300), torch.full_like(gap, torch.inf))
    dist[torch.arange(200), y] = torch.inf
    true = dist.min(1).values
    rho = float(true.median().detach())  # half the points closer than ρ, half farther
    assert (x - 0.5).abs().max() + rho < 0.5  # every ball lies inside the box [0, 1]^64: no box effects
    res = attacks.autoattack_l2(lin, x, y, rho, version=version, in_shape=(1, 8, 8))
    clear_in, clear_out = true < 0.95 * rho, true > rho
    assert clear_in.sum() > 20 and clear_out.sum() > 20
    assert res.success[clear_in].all()
    assert not res.success[clear_out].any()
    assert (res.distance[res.success] >= true[res.success] * (1 - 1e-9)).all()


def test_autoattack_never_beats_certificate_and_is_verified(data_dir):
    torch.manual_seed(0)
    model, _ = train_standard("mlp-2x64-softplus", epochs=1, data_dir=data_dir, limit=10000, progress=False)
    model = model.double().eval()
    X, y = data.load_tensors("mnist", "test", data_dir=data_dir, limit=100)
    X = X.flatten(1).double()
    rho = 0.5
    res = attacks.autoattack_l2(model, X, y, rho, version="apgd", seed=0)
    with torch.no_grad():
        pred64 = model(res.x_adv.double()).argmax(1)
    dist64 = (res.x_adv.double() - X).norm(dim=1)
    assert torch.equal(res.success, (pred64 != y) & (dist64 <= rho))
    assert (res.x_adv >= -1e-12).all() and (res.x_adv <= 1 + 1e-12).all()  # AutoAttack stays in the box
    cert = crc(model, X, y, targets="all").certificate
    clean = model(X).argmax(1) == y
    certified = clean & (cert > rho)
    broken = clean & res.success
    assert certified.sum() > 10 and broken.sum() > 5  # both sides have something to compare
    assert not (certified & broken).any(), "a point certified beyond rho was broken: soundness bug"


def test_cli_autoattack_records(data_dir, tmp_path, capsys):
    from sorobust import cli, models
    from sorobust.artifacts import read_tsv

    ckpt = tmp_path / "m.pt"
    assert cli.main(["train", "--arch", "mlp-2x32-softplus", "--epochs", "1", "--limit", "2000", "--data-dir",
                     str(data_dir), "--out", str(ckpt), "--no-progress"]) == 0
    out = tmp_path / "aa.tsv"
    args = ["attack", "--checkpoint", str(ckpt), "--method", "autoattack", "--aa-version", "apgd", "--rho", "0.5",
            "--limit", "40", "--batch-size", "20", "--data-dir", str(data_dir), "--out", str(out), "--no-progress"]
    assert cli.main(args) == 0
    rows = read_tsv(out)
    model = models.load(ckpt)
    X, y = data.load_tensors("mnist", "test", data_dir=data_dir, limit=40)
    robust = []
    for i in (0, 20):  # the CLI seeds each batch with seed + its first index
        res = attacks.autoattack_l2(model, X[i:i + 20].flatten(1), y[i:i + 20], 0.5, version="apgd", seed=i)
        robust += res.robust.tolist()
    clean = (model(X.flatten(1)).argmax(1) == y).tolist()
    assert [r["robust"] for r in rows] == [int(c and r) for c, r in zip(clean, robust)]
    import json

    summary = json.loads(out.with_suffix(".json").read_text())
    assert summary["protocol"]["method"] == "autoattack" and summary["protocol"]["targets"] == "all"
    assert cli.main(args[:-1] + ["--targets", "runner-up", "--no-progress"]) == 2
    assert "every wrong class" in capsys.readouterr().err
