#!/usr/bin/env bash
# Stops the test cluster of up.sh: every job cancelled first (scontrol shutdown
# leaves running jobs' processes alive), then the daemons, then munged.
set -u
running() { pgrep -x slurmctld >/dev/null || pgrep -x slurmd >/dev/null || pgrep -x slurmstepd >/dev/null; }
if pgrep -x slurmctld >/dev/null; then
    scancel --user=root 2>/dev/null || true
    for _ in $(seq 150); do pgrep -x slurmstepd >/dev/null || break; sleep 0.1; done
    scontrol shutdown 2>/dev/null || true
fi
for _ in $(seq 150); do running || break; sleep 0.1; done
for p in $(pgrep -x slurmstepd) $(pgrep -x slurmd) $(pgrep -x slurmctld); do kill -9 "$p" 2>/dev/null; done
[ -s /run/munge/munged.pid ] && kill "$(cat /run/munge/munged.pid)" 2>/dev/null
for _ in $(seq 50); do pgrep -u munge -x munged >/dev/null || break; sleep 0.1; done
rmdir /sys/fs/cgroup/freezer/slurm_localhost 2>/dev/null || true
exit 0
