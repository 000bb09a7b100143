"""Resource requests of the workflow's jobs (issue 13): derived from the benchmark records, never below the safety
factor times what a measured job used, scaled with the budget, declared by every rule through one helper, and the
SLURM profile plans the paper profile."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sorobust import resources as R
from sorobust.workflow import load_yaml

ROOT = Path(__file__).resolve().parents[1]
CAL_PATH = ROOT / "workflow" / "resources.json"
SNAKEMAKE = shutil.which("snakemake") or str(Path(sys.executable).parent / "snakemake")


@pytest.fixture(scope="module")
def cal():
    return R.load_calibration(CAL_PATH)


def _config(name):
    return load_yaml((ROOT / "config" / f"{name}.yaml").read_text(), name)


def test_calibration_is_the_fit_of_the_committed_benchmark_records(cal):
    fresh = R.calibrate(ROOT / "results" / "quick", (ROOT / "results" / "smoke",))
    fresh["source"] = fresh["source"].replace(f"{ROOT.as_posix()}/", "")
    assert fresh == cal, "workflow/resources.json is stale: run `python -m sorobust.resources calibrate`"


@pytest.mark.parametrize("folder", ["quick", "smoke"])
def test_every_measured_job_gets_at_least_safety_times_what_it_used(cal, folder):
    results = ROOT / "results" / folder
    config = _config(folder)
    jobs = R.benchmark_jobs(results)
    assert len(jobs) > 50
    for j in jobs:
        r = R.request(cal, j["rule"], j["wildcards"], config)
        assert r["mem_mb"] >= R.SAFETY * j["max_rss"], (j, r)
        assert r["runtime"] * 60 >= R.SAFETY * j["s"], (j, r)


def test_requests_scale_with_the_budget(cal):
    config = _config("config")
    wc = {"arch": "mlp-2x1024-softplus", "method": "crt", "gamma": "0.01", "rho": "1.58", "epochs": "30",
          "ntrain": "all", "seed": "1"}
    base = R.request(cal, "train", wc, config)
    assert R.request(cal, "train", {**wc, "epochs": "60"}, config)["runtime"] > base["runtime"]
    assert R.request(cal, "train", {**wc, "ntrain": "2000"}, config)["runtime"] < base["runtime"]
    deeper = R.request(cal, "train", {**wc, "arch": "mlp-4x1024-softplus"}, config)
    assert deeper["runtime"] > base["runtime"] and deeper["mem_mb"] >= base["mem_mb"]
    narrow = R.request(cal, "train", {**wc, "arch": "mlp-2x16-softplus"}, config)
    assert narrow["mem_mb"] < base["mem_mb"]
    # PGD's steps multiply its work
    pgd = {**wc, "method": "pgd"}
    more_steps = {**config, "training": {**config["training"], "pgd": {**config["training"]["pgd"], "pgd_steps": 20}}}
    assert R.request(cal, "train", pgd, more_steps)["runtime"] > R.request(cal, "train", pgd, config)["runtime"]
    # test points
    cwc = {"model": "mlp-4x1024-softplus/crown-ibp-g0-r1.58-e100-nall-s1", "certifier": "crown", "targets": "all",
           "rho": "1.58", "ntest": "all"}
    assert R.request(cal, "certify", cwc, config)["runtime"] > R.request(cal, "certify", {**cwc, "ntest": "100"},
                                                                          config)["runtime"]
    # a GPU adds host memory; a retry doubles both; rendering jobs do not scale
    assert R.request(cal, "train", wc, config, gpu=1)["mem_mb"] == base["mem_mb"] + R.GPU_HOST_MB
    twice = R.request(cal, "train", wc, config, attempt=2)
    assert twice == {"mem_mb": 2 * base["mem_mb"], "runtime": 2 * base["runtime"]}
    assert R.request(cal, "table", {"table": "table1"}, config) == R.request(cal, "table", {"table": "table1"},
                                                                             _config("smoke"))
    # floors
    small = R.request(cal, "plan", {}, config)
    assert small["runtime"] >= R.RUNTIME_FLOOR_MIN and small["mem_mb"] >= R.MEM_FLOOR_MB


def test_kinds_without_records_fall_back_to_their_rule(cal):
    """AutoAttack, or a certifier the calibrating run lacked, take the largest coefficients of their rule (and
    family), never nothing."""
    config = _config("config")
    wc = {"model": "mlp-2x1024-softplus/crt-g0.01-r1.58-e30-nall-s1", "targets": "all", "rho": "1.58",
          "ntest": "all"}
    aa = R.request(cal, "autoattack", wc, config, gpu=1)
    assert aa["runtime"] >= R.RUNTIME_FLOOR_MIN and aa["mem_mb"] > R.GPU_HOST_MB
    odd = R.request(cal, "certify", {**wc, "certifier": "crc-local", "targets": "runner-up"}, config)
    assert odd["mem_mb"] >= R.MEM_FLOOR_MB


def test_arch_size():
    assert R.arch_size("mlp-2x1024-softplus") == pytest.approx((784 * 1024 + 1024 * 10) / 1e6)
    assert R.arch_size("mlp-4x1024-relu") == pytest.approx((784 * 1024 + 2 * 1024 ** 2 + 10240) / 1e6)
    assert R.arch_size("cnn-5c3k1s-tanh") == pytest.approx((5 * 9 * 676 + 10 * 5 * 676) / 1e6)
    with pytest.raises(ValueError):
        R.arch_size("resnet18")


def test_every_rule_declares_its_resources_through_the_one_helper():
    """Every rule with a command asks job_resources(<its own name>) in workflow/rules/common.smk; none writes a
    number of its own."""
    seen = {}
    for smk in sorted((ROOT / "workflow" / "rules").glob("*.smk")):
        text = smk.read_text()
        for m in re.finditer(r"^rule (\w+):\n(.*?)(?=^rule |\Z)", text, re.M | re.S):
            name, body = m.group(1), m.group(2)
            if "shell:" not in body:
                continue
            res = re.search(r"^    resources:\n((?:        .*\n)+)", body, re.M)
            assert res, f"rule {name} ({smk.name}) declares no resources"
            assert res.group(1).strip() == f'**job_resources("{name}"),', (name, res.group(1))
            seen[name] = smk.name
    assert set(seen) >= {"data", "plan", "train", "certify", "curvature", "attack", "autoattack", "table", "figure",
                         "manifest"}, seen
    assert set(seen) <= set(R.RULE_ORDER), seen


@pytest.mark.skipif(not Path(SNAKEMAKE).exists(), reason="snakemake not installed")
def test_slurm_profile_plans_the_paper_profile(cal):
    """`snakemake -n` with profiles/slurm plans the paper DAG (config/config.yaml): the job counts of
    sorobust.resources.plan_jobs, which the README's resource table counts."""
    pytest.importorskip("snakemake_executor_plugin_slurm")
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}")
    r = subprocess.run([SNAKEMAKE, "-n", "--workflow-profile", "profiles/slurm", "--config", "name=dry_slurm"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-3000:]
    assert "profiles/slurm" in out
    counts = {}
    for rule, _ in R.plan_jobs({**_config("config"), "name": "dry_slurm"}):
        counts[rule] = counts.get(rule, 0) + 1
    for rule, n in counts.items():
        assert re.search(rf"^{rule}\s+{n}\s*$", out, re.M), (rule, n, out[-3000:])


def test_a_gpu_profile_on_a_machine_without_a_gpu_says_its_cost_and_stops(cal):
    """Issue 12: a bare `snakemake` (the paper profile, device auto) on a CPU-only machine names its cost and the CPU
    profiles instead of starting; CPU profiles, GPU machines and SOROBUST_ALLOW_CPU=1 go ahead."""
    paper = _config("config")
    why = R.cpu_guard(paper, cal, cuda_available=False, environ={})
    jobs = R.plan_jobs(paper)
    n_train = sum(rule == "train" for rule, _ in jobs)
    assert f"its {len(jobs)} jobs include {n_train} trainings of 30-100 epochs" in why
    hours = sum(R.request(cal, rule, wc, paper)["runtime"] for rule, wc in jobs) / R.SAFETY / 60
    assert f"about {hours:.0f} hours" in why
    for f, _ in R.CPU_PROFILES:
        assert f"--configfile {f}" in why and (ROOT / f).is_file()
    assert "\n" not in why and "SOROBUST_ALLOW_CPU=1" in why
    assert R.cpu_guard(paper, cal, cuda_available=True, environ={}) is None
    assert R.cpu_guard(paper, cal, cuda_available=False, environ={"SOROBUST_ALLOW_CPU": "1"}) is None
    assert R.cpu_guard(_config("quick"), cal, cuda_available=False, environ={}) is None  # device: cpu
