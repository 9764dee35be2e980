#!/usr/bin/env bash
# A one-node SLURM cluster on this machine, for the tests marked `slurm` (Debian's slurm-wlm and munge):
#   bash scripts/slurm_local.sh start    # install (root + apt) if missing, configure, start, wait for `sinfo`: idle
#   bash scripts/slurm_local.sh status   # sinfo, or exit 1 when the cluster does not answer
#   bash scripts/slurm_local.sh stop     # stop slurmd, slurmctld and munged
# The node advertises the CPUs and memory `slurmd -C` reads from the machine, in one partition `cpu` (no GPUs,
# no accounting database: submitit's sacct look-ups fail and the launcher falls back to squeue).
# The config goes to /etc/slurm/slurm.conf, where sbatch, srun and sinfo find it; a slurm.conf that this script did
# not write is never replaced.
set -euo pipefail

CONF=/etc/slurm/slurm.conf
MARK="# written by frcnn_lab scripts/slurm_local.sh"
SPOOL=/var/spool/slurm-local
LOGS=/var/log/slurm-local
PARTITION=cpu

die() { echo "slurm_local: $*" >&2; exit 1; }

cluster_answers() { command -v sinfo >/dev/null && timeout 10 sinfo -h >/dev/null 2>&1; }

install_packages() {
    if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null; then
        return
    fi
    [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null || die "slurm-wlm and munge are missing: install them (as root: apt-get install slurm-wlm munge)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null
}

write_config() {
    if [ -f "$CONF" ] && ! grep -qF "$MARK" "$CONF"; then
        die "$CONF exists and was not written by this script: not replacing it"
    fi
    local node cpus memory
    node=$(hostname -s)
    # `slurmd -C` prints this machine as slurm.conf would describe it: NodeName=... CPUs=N ... RealMemory=M
    cpus=$(slurmd -C | sed -n 's/.* CPUs=\([0-9]*\).*/\1/p' | head -1)
    memory=$(slurmd -C | sed -n 's/.* RealMemory=\([0-9]*\).*/\1/p' | head -1)
    [ -n "$cpus" ] && [ -n "$memory" ] || die "slurmd -C did not report CPUs and RealMemory"
    mkdir -p "$(dirname "$CONF")" "$SPOOL/ctld" "$SPOOL/d" "$LOGS"
    chown -R slurm:slurm "$SPOOL/ctld" "$LOGS"
    cat > "$CONF" <<EOF
$MARK: a one-node cluster for the tests
ClusterName=frcnnlab
SlurmctldHost=$node(127.0.0.1)
SlurmUser=slurm
AuthType=auth/munge
StateSaveLocation=$SPOOL/ctld
SlurmdSpoolDir=$SPOOL/d
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=$LOGS/slurmctld.log
SlurmdLogFile=$LOGS/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
DefMemPerCPU=$((memory / cpus))
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MpiDefault=none
ReturnToService=2
SlurmdTimeout=60
NodeName=$node NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$memory State=UNKNOWN
PartitionName=$PARTITION Nodes=$node Default=YES MaxTime=INFINITE State=UP
EOF
}

start() {
    if cluster_answers; then
        echo "slurm_local: a cluster answers already"; sinfo; return
    fi
    install_packages
    write_config
    mkdir -p /run/munge && chown munge:munge /run/munge
    pgrep -u munge -x munged >/dev/null || runuser -u munge -- munged
    slurmctld
    slurmd
    local node
    node=$(hostname -s)
    for _ in $(seq 60); do
        if [ "$(sinfo -h -n "$node" -o %t 2>/dev/null)" = idle ]; then
            sinfo; return
        fi
        sleep 1
    done
    sinfo || true
    die "node $node is not idle after 60 s (logs in $LOGS)"
}

stop_pidfile() {
    local pidfile=$1
    [ -f "$pidfile" ] || return 0
    local pid
    pid=$(cat "$pidfile")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    rm -f "$pidfile"
}

stop() {
    stop_pidfile /run/slurmd.pid
    stop_pidfile /run/slurmctld.pid
    stop_pidfile /run/munge/munged.pid
    echo "slurm_local: stopped"
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status) cluster_answers || die "no cluster answers"; sinfo ;;
    *) die "usage: $0 start|stop|status" ;;
esac
