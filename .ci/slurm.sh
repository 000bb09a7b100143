#!/usr/bin/env bash
# CI, the SLURM part (issue 13), called by .ci/run after the local smoke run: install SLURM and munge (Debian's
# packages) and the Snakemake SLURM executor, start a private single-node cluster (.ci/slurm_cluster.sh), run the
# smoke DAG through it into results/smoke_slurm (profiles/slurm-ci), check that every job ran as a SLURM job and
# that its models are bitwise the local run's, audit the folder and compare its tables with the local smoke run's;
# the daemons are stopped by their PIDs and the cluster's state removed however this ends.
#
#   bash .ci/slurm.sh [LOCAL_RUN]        LOCAL_RUN: the local smoke run to compare with (default results/smoke_ci,
#                                        else the committed results/smoke)
#
# SOROBUST_CI_SLURM=sub (default) runs the part of the smoke DAG in .ci/smoke_slurm.yaml (19 jobs, every kind but
# AutoAttack: about 3 minutes on 2 idle cores, within CI's budget for this part); SOROBUST_CI_SLURM=full runs the
# whole smoke DAG (98 jobs; about as long as the local smoke run again, plus a few seconds per job).
set -euo pipefail
cd "$(dirname "$0")/.."
export SOROBUST_DATA_DIR="${SOROBUST_DATA_DIR:-$(cd .. && pwd)/shared/data}"
export PATH="$PWD/.venv/bin:$PATH"
name=smoke_slurm
ref=${1:-results/smoke_ci}
[ -d "$ref/tables" ] || ref=results/smoke
start=$SECONDS
# --- install ------------------------------------------------------------------------------------------------
[ "$(id -u)" = 0 ] || { echo ".ci/slurm.sh: needs root (apt-get, slurmd)"; exit 2; }
if ! command -v slurmctld > /dev/null || ! command -v slurmd > /dev/null || ! command -v munged > /dev/null; then
    apt-get update -q > /dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q slurm-wlm munge > /dev/null
fi
.venv/bin/pip install -q -e '.[workflow]'
echo "slurm: installed in $((SECONDS - start)) s"
# --- a single-node cluster, down on exit ---------------------------------------------------------------------
state=$(mktemp -d /tmp/sorobust-slurm.XXXXXX)
trap '.ci/slurm_cluster.sh down "$state"' EXIT
.ci/slurm_cluster.sh up "$state"
export SLURM_CONF="$state/slurm.conf"
sinfo
# --- the smoke DAG, every job a SLURM job --------------------------------------------------------------------
case ${SOROBUST_CI_SLURM:-sub} in
    sub) configfile=.ci/smoke_slurm.yaml ;;
    full) configfile=config/smoke.yaml ;;
    *) echo ".ci/slurm.sh: SOROBUST_CI_SLURM must be sub or full"; exit 2 ;;
esac
rm -rf "results/$name"
t0=$SECONDS
snakemake --workflow-profile profiles/slurm-ci --configfile "$configfile" --config "name=$name" --quiet rules
echo "slurm: smoke DAG ($configfile) in $((SECONDS - t0)) s"
squeue -h -t all -o '%i|%T|%N|%P|%k' > "$state/squeue.txt"
python - "results/$name" "$state/squeue.txt" "$ref" <<'EOF'
"""Every job of the run is a COMPLETED SLURM job (squeue, MinJobAge keeps them listed), one per benchmark record,
and every provenance record names one of them, with its node and partition; and the models are bitwise those of
the local run (when it kept them)."""
import json
import sys
from pathlib import Path

import torch

res, ref = Path(sys.argv[1]), Path(sys.argv[3])
jobs = {}
for line in Path(sys.argv[2]).read_text().splitlines():
    job_id, state, node, partition, comment = line.split("|", 4)
    if comment.startswith("rule_"):
        jobs[job_id] = (state, node, partition, comment)
bad = {j: v for j, v in jobs.items() if v[0] != "COMPLETED"}
assert not bad, f"SLURM jobs not COMPLETED: {bad}"
n_bench = len(list((res / "benchmarks").rglob("*.tsv")))
assert len(jobs) == n_bench, f"{len(jobs)} SLURM jobs in squeue, {n_bench} jobs ran"
records = 0
for p in sorted(res.rglob("*.json")):
    prov = json.loads(p.read_text()).get("provenance")
    if prov is None:
        continue
    ex = prov["environment"].get("executor", {})
    assert ex.get("name") == "slurm" and ex.get("job_id") in jobs, f"{p}: not a SLURM job of this run: {ex}"
    state, node, partition, _ = jobs[ex["job_id"]]
    assert (ex["node"], ex["partition"]) == (node, partition), (p, ex, jobs[ex["job_id"]])
    records += 1
models = sorted(res.glob("models/**/model.pt"))
same = 0
for m in models:
    other = ref / m.relative_to(res)
    if other.is_file():
        a, b = (torch.load(x, map_location="cpu", weights_only=True)["state_dict"] for x in (m, other))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), f"{m} differs from {other}"
        same += 1
print(f"slurm: {len(jobs)} SLURM jobs, all COMPLETED, {len(set(v[1] for v in jobs.values()))} node(s); "
      f"{records} provenance records name their job; {same}/{len(models)} models bitwise equal to {ref}'s")
EOF
# --- audit, and compare with the local run -------------------------------------------------------------------
sorobust audit "results/$name"
sorobust compare "results/$name" "$ref"
echo "slurm: done in $((SECONDS - start)) s"
