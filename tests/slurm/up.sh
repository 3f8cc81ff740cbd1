#!/usr/bin/env bash
# A one-node Slurm (Debian 12's 22.05) for the tests, as root, without systemd.
# After ../shared/slurm/slurm-up.sh; the packages (slurmctld slurmd slurm-client
# munge) are installed by .ci/run, not here. Writes /etc/slurm/slurm.conf only
# if it is absent or ours (its first line), so a real cluster's is never touched.
set -euo pipefail
MARK="# nexusws test cluster (tests/slurm/up.sh)"
conf=/etc/slurm/slurm.conf
if [ -e "$conf" ] && [ "$(head -n 1 "$conf")" != "$MARK" ]; then
    echo "up.sh: $conf exists and is not the test cluster's: not touching it" >&2
    exit 3
fi

# munge: Slurm's authentication
install -d -o munge -g munge -m 0700 /etc/munge
install -d -o munge -g munge -m 0755 /run/munge
[ -s /etc/munge/munge.key ] || runuser -u munge -- mungekey --verbose
chown munge:munge /etc/munge/munge.key && chmod 0400 /etc/munge/munge.key
pgrep -u munge -x munged >/dev/null || runuser -u munge -- /usr/sbin/munged
munge -n | unmunge >/dev/null

# proctrack/cgroup ends what a job daemonized (setsid, double fork) when it is
# cancelled; linuxproc does not. It needs the cgroup v1 freezer hierarchy.
if [ -d /sys/fs/cgroup/freezer ]; then proctrack=proctrack/cgroup; else proctrack=proctrack/linuxproc; fi
state=/var/spool/nexusws-test-slurm  # its own: slurmctld refuses the state of another cluster
install -d /etc/slurm "$state/ctld" "$state/d" /var/log/slurm /run/slurm
cat > "$conf" <<CONF
$MARK
ClusterName=nexusws-test
SlurmctldHost=localhost
SlurmUser=root
AuthType=auth/munge
StateSaveLocation=$state/ctld
SlurmdSpoolDir=$state/d
SlurmctldPidFile=/run/slurm/slurmctld.pid
SlurmdPidFile=/run/slurm/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
ProctrackType=$proctrack
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
KillWait=5
MinJobAge=60
InactiveLimit=0
NodeName=localhost CPUs=$(nproc) State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
CONF
# 22.05's slurmd always initialises a cgroup plugin; v2 needs systemd.
printf '%s\nCgroupPlugin=cgroup/v1\n' "$MARK" > /etc/slurm/cgroup.conf

pgrep -x slurmctld >/dev/null || slurmctld -c   # -c: a clean state
pgrep -x slurmd >/dev/null || slurmd
for i in $(seq 100); do
    case "$(sinfo -h -n localhost -o %T 2>/dev/null || true)" in idle*|mix*|alloc*) exit 0 ;; esac
    [ "$i" = 20 ] && scontrol update NodeName=localhost State=RESUME 2>/dev/null || true
    sleep 0.2
done
echo "up.sh: the node did not come up" >&2
tail -n 30 /var/log/slurm/*.log >&2
exit 1
