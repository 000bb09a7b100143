"""The DAG under SLURM (issue 13): provenance names the executor and the job; and (slow, a live single-node SLURM)
a training job killed with scancel and rerun ends with the model of an uninterrupted run."""

import copy
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from sorobust import artifacts
from sorobust import audit as audit_mod

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = shutil.which("snakemake") or str(Path(sys.executable).parent / "snakemake")

SLURM_ENV = {  # what a batch step of the CI cluster sees (.ci/slurm_cluster.sh), plus a GPU cluster's extras
    "SLURM_JOB_ID": "4711", "SLURM_JOBID": "4711", "SLURM_JOB_NAME": "0b1c-run-uuid", "SLURMD_NODENAME": "gpu017",
    "SLURM_JOB_NODELIST": "gpu017", "SLURM_JOB_PARTITION": "gpu", "SLURM_CLUSTER_NAME": "hpc",
    "SLURM_JOB_ACCOUNT": "lab", "SLURM_CPUS_PER_TASK": "2", "SLURM_MEM_PER_NODE": "5094", "SLURM_JOB_GPUS": "3",
    "SLURM_STEP_ID": "0", "SLURM_RESTART_COUNT": "1", "SLURM_SUBMIT_HOST": "login1",
}


def _clear_slurm(monkeypatch):
    for k in list(os.environ):
        if k.startswith("SLURM"):
            monkeypatch.delenv(k)


def test_executor_is_local_outside_slurm(monkeypatch):
    _clear_slurm(monkeypatch)
    assert artifacts.executor() == {"name": "local"}
    assert artifacts.environment()["executor"] == {"name": "local"}


def test_executor_names_the_slurm_job_node_and_partition(monkeypatch):
    _clear_slurm(monkeypatch)
    for k, v in SLURM_ENV.items():
        monkeypatch.setenv(k, v)
    ex = artifacts.executor()
    assert ex == {"name": "slurm", "job_id": "4711", "array_job_id": None, "array_task_id": None, "step_id": "0",
                  "job_name": "0b1c-run-uuid", "node": "gpu017", "partition": "gpu", "cluster": "hpc",
                  "account": "lab", "cpus_per_task": "2", "mem_per_node_mb": "5094", "gpus": "3",
                  "restart_count": "1", "submit_host": "login1"}
    # a batch step without SLURMD_NODENAME: the node list names the node
    monkeypatch.delenv("SLURMD_NODENAME")
    assert artifacts.executor()["node"] == "gpu017"
    # environment() and provenance() carry it, beside the device and the host, and the schema accepts the record
    rec = artifacts.provenance("sorobust train --x", {"a": 1})
    env = rec["environment"]
    assert env["executor"]["job_id"] == "4711" and env["executor"]["partition"] == "gpu"
    assert env["device"] and env["hostname"]
    assert not list(audit_mod.validator("provenance").iter_errors(rec))


def test_provenance_schema_checks_the_executor(monkeypatch):
    _clear_slurm(monkeypatch)
    rec = artifacts.provenance("sorobust train --x", {"a": 1})
    v = audit_mod.validator("provenance")
    assert not list(v.iter_errors(rec))
    old = copy.deepcopy(rec)
    del old["environment"]["executor"]  # records written before issue 13
    assert not list(v.iter_errors(old))
    for bad in ({"name": "slurm", "node": "n1", "partition": "p"},  # no job id
                {"name": "slurm", "job_id": "12a", "node": "n1", "partition": "p"},
                {"name": "local", "job_id": "12"},
                {"name": "pbs"}):
            b = copy.deepcopy(rec)
            b["environment"]["executor"] = bad
            assert list(v.iter_errors(b)), bad


# ------------------------------------------------------------------------------------------ live SLURM (slow)


def _live_slurm(tmp_path_factory):
    """A SLURM to submit to: the one SLURM_CONF names if it answers, else a private single-node cluster started by
    .ci/slurm_cluster.sh (root, slurm-wlm and munge needed) and stopped after the test."""
    env = dict(os.environ)
    if shutil.which("sinfo") and subprocess.run(["sinfo", "-h"], env=env, capture_output=True).returncode == 0:
        return env, None
    if os.geteuid() != 0 or not (shutil.which("slurmctld") and shutil.which("munged")):
        pytest.skip("no SLURM: needs a running cluster (SLURM_CONF) or root with slurm-wlm and munge installed")
    state = tmp_path_factory.mktemp("slurm") / "cluster"
    r = subprocess.run([str(ROOT / ".ci" / "slurm_cluster.sh"), "up", str(state)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"could not start a SLURM cluster: {(r.stdout + r.stderr)[-500:]}")
    env["SLURM_CONF"] = str(state / "slurm.conf")
    return env, state


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    pytest.importorskip("snakemake_executor_plugin_slurm")
    env, state = _live_slurm(tmp_path_factory)
    yield env
    if state is not None:
        subprocess.run([str(ROOT / ".ci" / "slurm_cluster.sh"), "down", str(state)], check=False)


def _workdir(tmp_path):
    """A copy of the workflow and a config whose γ-regularised 2×16 net trains 6 epochs of 2000 images (seconds each;
    its checkpoint holds the optimiser's and the power iterations' state besides the weights)."""
    wd = tmp_path / "wd"
    wd.mkdir()
    for item in ("Snakefile", "workflow", "config", "profiles"):
        src = ROOT / item
        (shutil.copytree if src.is_dir() else shutil.copy)(src, wd / item)
    cfg = yaml.safe_load((ROOT / "config" / "smoke.yaml").read_text())
    cfg["name"] = "kill"
    cfg["training"]["gamma"]["epochs"] = 6
    (wd / "config" / "kill.yaml").write_text(yaml.safe_dump(cfg))
    return wd, "models/mlp-2x16-sigmoid/gamma-g0.01-r0-e6-n2000-s1/model.pt"


def _squeue(env, *args):
    r = subprocess.run(["squeue", "-h", *args], env=env, capture_output=True, text=True)
    return r.stdout.split()


@pytest.mark.slow
def test_scancelled_training_job_resumes_to_the_uninterrupted_model(slurm, tmp_path):
    """A SLURM training job killed mid-training with scancel: the workflow stops, model.pt is absent, the per-epoch
    checkpoint model.pt.partial survives; rerunning the same command (--rerun-incomplete, in the profile) resumes it
    in a new SLURM job, and the model equals, bitwise, that of an uninterrupted run of the same job."""
    wd, model = _workdir(tmp_path)
    env = dict(slurm, PATH=f"{Path(sys.executable).parent}:{slurm.get('PATH', '')}")
    procs = []

    def run(name):
        args = [SNAKEMAKE, f"results/{name}/{model}", "--workflow-profile", "profiles/slurm-ci",
                "--configfile", "config/kill.yaml", "--config", f"name={name}"]
        procs.append(subprocess.Popen(args, cwd=wd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      text=True))
        return procs[-1]

    try:
        _scancel_and_resume(slurm, wd, model, run)
    finally:
        for p in procs:  # a failed assertion leaves no snakemake behind
            if p.poll() is None:
                p.terminate()
                p.wait(timeout=60)


def _scancel_and_resume(slurm, wd, model, run):
    import torch

    # the interrupted run: scancel the training job once its first epochs are checkpointed
    proc = run("killed")
    out_model = wd / "results" / "killed" / model
    partial = out_model.with_name("model.pt.partial")
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None and not partial.exists():
        time.sleep(0.2)
    assert partial.exists(), "training never checkpointed: " + (proc.stdout.read() if proc.poll() is not None else "")
    jobs = [j for j in _squeue(slurm, "-t", "running", "-o", "%i|%k") if "|rule_train_wildcards_killed_" in j]
    assert len(jobs) == 1, jobs
    job_id = jobs[0].split("|")[0]
    assert subprocess.run(["scancel", job_id], env=slurm).returncode == 0
    log, _ = proc.communicate(timeout=600)
    assert proc.returncode != 0, log[-3000:]
    assert job_id in log and "CANCELLED" in log, log[-3000:]
    assert not out_model.exists() and partial.exists()
    epochs_done = len(torch.load(partial, map_location="cpu", weights_only=True)["meta"]["history"])
    assert 1 <= epochs_done < 6, epochs_done
    # the rerun resumes in a new SLURM job and completes
    proc = run("killed")
    log2, _ = proc.communicate(timeout=900)
    assert proc.returncode == 0, log2[-3000:]
    assert out_model.exists() and not partial.exists()
    train_log = (wd / "results/killed/logs/train/mlp-2x16-sigmoid/gamma-g0.01-r0-e6-n2000-s1.log").read_text()
    summary = json.loads(out_model.with_name("model.json").read_text())
    ex = summary["provenance"]["environment"]["executor"]
    assert ex["name"] == "slurm" and ex["job_id"] != job_id and ex["partition"], ex
    # an uninterrupted run of the same job (another results folder, the same options)
    proc = run("whole")
    log3, _ = proc.communicate(timeout=900)
    assert proc.returncode == 0, log3[-3000:]
    a = torch.load(out_model, map_location="cpu", weights_only=True)
    b = torch.load(wd / "results" / "whole" / model, map_location="cpu", weights_only=True)
    sa, sb = a["state_dict"], b["state_dict"]
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]) and sa[k].dtype == sb[k].dtype, k
    # and so is every epoch's record (losses, K, accuracies), but its wall time
    strip = [[{k: v for k, v in h.items() if k != "seconds"} for h in x["meta"]["history"]] for x in (a, b)]
    assert strip[0] == strip[1] and len(strip[0]) == 6
    assert "resum" in train_log.lower(), train_log[-2000:]
