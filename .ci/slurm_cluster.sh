#!/usr/bin/env bash
# A private single-node SLURM cluster on this host, for CI and the slow SLURM tests (issue 13).
#
#   .ci/slurm_cluster.sh up STATE      write STATE/slurm.conf, start munged, slurmctld and slurmd (state, sockets,
#                                      logs and PID files all under STATE); prints nothing on success
#   .ci/slurm_cluster.sh down STATE    cancel every job of that cluster, stop the daemons it started (by the PIDs
#                                      in STATE/*.pid) and remove STATE
#
# Clients find the cluster through SLURM_CONF=STATE/slurm.conf (`source STATE/env`) or the default path
# /etc/slurm/slurm.conf, a link to it while the cluster is up ('up' refuses to run where that path exists). Nothing
# else is written outside STATE: munge uses its own key and socket (slurm.conf's AuthInfo points at it), and no
# system service is started.
# Needs root (slurmd runs jobs as their submitting user) and the Debian packages slurm-wlm and munge.
# Settings (not experiment config): ProctrackType linuxproc and TaskPlugin none (no cgroups in containers),
# accounting off (no slurmdbd), MinJobAge 3600 s so finished jobs stay visible to squeue, the status command
# snakemake-executor-plugin-slurm uses without sacct; memory is a consumable resource (CR_Core_Memory), so the
# mem_mb requests are checked against the node's RealMemory.
set -euo pipefail

SYSTEM_CONF=/etc/slurm/slurm.conf  # where SLURM's clients look without SLURM_CONF (Debian's build)
cmd=${1:?usage: slurm_cluster.sh up|down STATE}
state=${2:?usage: slurm_cluster.sh up|down STATE}

up() {
    [ "$(id -u)" = 0 ] || { echo "slurm_cluster.sh: needs root (slurmd)"; exit 2; }
    [ ! -e "$state/slurm.conf" ] || { echo "slurm_cluster.sh: $state already holds a cluster"; exit 2; }
    [ ! -e "$SYSTEM_CONF" ] && [ ! -L "$SYSTEM_CONF" ] || {
        echo "slurm_cluster.sh: $SYSTEM_CONF exists: this host has a SLURM of its own (or a cluster is up)"; exit 2; }
    mkdir -p "$state"/{munge,ctld,spool,log}
    chmod 755 "$state" "$state/munge"
    state=$(cd "$state" && pwd)
    local node cpus mem port
    node=$(hostname -s)
    cpus=$(nproc)
    # the node's memory as slurmd measures it, less 5% for the daemons and the workflow's own process
    mem=$(slurmd -C | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p')
    mem=$((mem * 95 / 100))
    port=${SOROBUST_SLURM_PORT:-6817}  # slurmctld; slurmd listens on the next port
    head -c 1024 /dev/urandom > "$state/munge/munge.key"
    chmod 400 "$state/munge/munge.key"
    cat > "$state/slurm.conf" <<EOF
# written by .ci/slurm_cluster.sh: a private single-node cluster (removed by 'down')
ClusterName=sorobust
SlurmctldHost=$node
SlurmctldPort=$port
SlurmdPort=$((port + 1))
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$state/munge/munge.socket
CredType=cred/munge
StateSaveLocation=$state/ctld
SlurmdSpoolDir=$state/spool
SlurmctldPidFile=$state/slurmctld.pid
SlurmdPidFile=$state/slurmd.pid
SlurmctldLogFile=$state/log/slurmctld.log
SlurmdLogFile=$state/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SwitchType=switch/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
MinJobAge=3600
ReturnToService=2
SlurmdTimeout=300
PlugStackConfig=$state/plugstack.conf
NodeName=$node CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=ci Nodes=$node Default=YES MaxTime=INFINITE State=UP
EOF
    : > "$state/plugstack.conf"
    # srun inside a job reads the default path: snakemake's SLURM jobstep drops SLURM_CONF from the job step's
    # environment (it strips SLURM_* but the job's identity), so the config is linked there as well
    ln -s "$state/slurm.conf" "$SYSTEM_CONF"
    echo "export SLURM_CONF=$state/slurm.conf" > "$state/env"
    export SLURM_CONF="$state/slurm.conf"
    # foreground daemons in the background: their PIDs are $!, recorded for 'down'
    munged -F --force --key-file="$state/munge/munge.key" --socket="$state/munge/munge.socket" \
        --pid-file="$state/munge/munged.pid" --log-file="$state/log/munged.log" --seed-file="$state/munge/seed" \
        > /dev/null 2>&1 &
    echo $! > "$state/munged.pid.own"
    for _ in $(seq 50); do [ -S "$state/munge/munge.socket" ] && break; sleep 0.1; done
    slurmctld -D -i -f "$state/slurm.conf" > "$state/log/slurmctld.out" 2>&1 &
    echo $! > "$state/slurmctld.pid.own"
    slurmd -D -f "$state/slurm.conf" > "$state/log/slurmd.out" 2>&1 &
    echo $! > "$state/slurmd.pid.own"
    for _ in $(seq 100); do
        if sinfo -h -N -o '%T' 2>/dev/null | grep -qx 'idle'; then return 0; fi
        sleep 0.2
    done
    echo "slurm_cluster.sh: the node did not come up; logs in $state/log:"
    tail -n 20 "$state"/log/*
    down
    exit 1
}

down() {
    [ -d "$state" ] || return 0
    export SLURM_CONF="$state/slurm.conf"
    if [ -s "$state/slurmctld.pid.own" ] && kill -0 "$(cat "$state/slurmctld.pid.own")" 2>/dev/null; then
        scancel --quiet --full --user="$(id -un)" 2>/dev/null || true
        for _ in $(seq 50); do
            [ -z "$(squeue -h -t running,completing,pending -o %i 2>/dev/null)" ] && break
            sleep 0.2
        done
    fi
    # stop the daemons this script started, by PID: slurmd first, munged last
    for d in slurmd slurmctld munged; do
        pidfile="$state/$d.pid.own"
        [ -s "$pidfile" ] || continue
        pid=$(cat "$pidfile")
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$pid" 2>/dev/null || true
    done
    # the link to the default config path, if it is this cluster's
    if [ -L "$SYSTEM_CONF" ] && [ "$(readlink "$SYSTEM_CONF")" = "$(cd "$state" && pwd)/slurm.conf" ]; then
        rm -f "$SYSTEM_CONF"
    fi
    rm -rf "$state"
}

case $cmd in
    up) up ;;
    down) down ;;
    *) echo "usage: slurm_cluster.sh up|down STATE"; exit 2 ;;
esac
