#!/usr/bin/env bash
# Tests `rnnlab slurm` against a real Slurm: installs Debian's slurm-wlm and munge when
# they are missing, starts munged, slurmctld and slurmd on this machine (one node, its
# CPUs, a configuration written into a temporary folder, nothing under /etc touched),
# submits a small experiment as a job array, and checks that
#   1. the report job ran after the array and wrote REPORT.md;
#   2. every run ran exactly once (one "Done after" line per run in the array's logs);
#   3. the results are bit for bit those of a local `rnnlab run` of the same file
#      (weights and metric tables byte-identical; summaries equal but for wall times);
#   4. with one array task cancelled (`scancel` of one index), a second `rnnlab slurm`
#      finishes the runs it left, each still trained to completion exactly once;
#   5. `rnnlab slurm` on a complete experiment submits nothing.
# Every daemon it started is stopped by pid when it ends, on success or failure.
#
#   scripts/slurm-test.sh [path/to/rnnlab]     (default: target/release/rnnlab)
set -euo pipefail
cd "$(dirname "$0")/.."
rnnlab=$(realpath "${1:-target/release/rnnlab}")
started=$SECONDS

if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
    echo "installing slurm-wlm and munge (apt-get)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q slurm-wlm munge >/dev/null
fi

work=$(mktemp -d /tmp/rnnlab-slurm-test.XXXXXX)
pids=()
stop() {
    local status=$?
    for pidfile in "$work"/slurmd.pid "$work"/slurmctld.pid "$work"/munged.pid; do
        if [ -s "$pidfile" ]; then kill "$(cat "$pidfile")" 2>/dev/null || true; fi
    done
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    sleep 1
    for pidfile in "$work"/slurmd.pid "$work"/slurmctld.pid "$work"/munged.pid; do
        if [ -s "$pidfile" ]; then kill -9 "$(cat "$pidfile")" 2>/dev/null || true; fi
    done
    if [ "$status" != 0 ]; then
        echo "FAILED (exit $status); daemon logs:" >&2
        tail -n 20 "$work"/*.log >&2 || true
    fi
    rm -rf "$work"
    exit "$status"
}
trap stop EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }
section() { echo "== $* ($((SECONDS - started)) s)"; }

# munge with its own key and socket, so that a munged the machine may run is left alone.
dd if=/dev/urandom of="$work/munge.key" bs=1024 count=1 status=none
chmod 400 "$work/munge.key"
mkdir -p "$work/munge"
chmod 700 "$work/munge"
munged --force --key-file="$work/munge.key" --socket="$work/munge.sock" \
    --pid-file="$work/munged.pid" --log-file="$work/munged.log" \
    --seed-file="$work/munge/seed"

node=$(hostname -s)
cpus=$(nproc)
port=$(( 20000 + RANDOM % 20000 ))
cat > "$work/slurm.conf" <<CONF
ClusterName=rnnlab-test
SlurmctldHost=$node(127.0.0.1)
SlurmctldPort=$port
SlurmdPort=$(( port + 1 ))
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$work/munge.sock
CredType=cred/munge
StateSaveLocation=$work/state
SlurmdSpoolDir=$work/spool
SlurmctldPidFile=$work/slurmctld.pid
SlurmdPidFile=$work/slurmd.pid
SlurmctldLogFile=$work/slurmctld.log
SlurmdLogFile=$work/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
MpiDefault=none
NodeName=$node NodeAddr=127.0.0.1 CPUs=$cpus State=UNKNOWN
PartitionName=test Nodes=$node Default=YES MaxTime=INFINITE State=UP
CONF
mkdir -p "$work/state" "$work/spool"
export SLURM_CONF="$work/slurm.conf"
slurmctld
slurmd
for _ in $(seq 60); do
    if sinfo -h -o '%T' 2>/dev/null | grep -qx idle; then break; fi
    sleep 1
done
sinfo -h -o '%T' | grep -qx idle || fail "the node did not come up: $(sinfo 2>&1)"
echo "slurm up: node $node, $cpus CPUs, port $port ($((SECONDS - started)) s)"

# Two small sweeps: `quick` for the plain path, `cut` with runs long enough to cancel a
# task mid-run (checkpoints every 100 steps).
cat > "$work/quick.yaml" <<YAML
name: quick
description: six small runs for the Slurm test
seeds: [0, 1, 2]
base:
  task: { kind: adding, seq_len: 20 }
  model: { cell: lstm, hidden: 16 }
  train: { optimizer: adam, lr: 1.0e-2, steps: 200, batch_size: 16, eval_every: 50, eval_samples: 64 }
sweep:
  model.cell: [lstm, gru]
YAML
sed -e 's/^name: quick/name: cut/' -e 's/steps: 200,/steps: 1500, checkpoint_every: 100,/' \
    -e 's/seq_len: 20/seq_len: 50/' -e 's/hidden: 16/hidden: 48/' \
    "$work/quick.yaml" > "$work/cut.yaml"

# Job ids from `rnnlab slurm`'s line "...: submitted array job A (N tasks) and report job R".
submit() {
    local output line
    output=$("$rnnlab" slurm "$@") || fail "rnnlab slurm $* failed"
    echo "$output"
    line=$(grep 'submitted array job' <<<"$output") || fail "no submission: $*"
    array_job=$(sed -E 's/.*array job ([0-9]+).*/\1/' <<<"$line")
    report_job=$(sed -E 's/.*report job ([0-9]+).*/\1/' <<<"$line")
}
# Waits until none of the jobs is pending, running or completing.
wait_jobs() {
    for _ in $(seq 600); do
        if [ -z "$(squeue -h -j "$1" -t PD,R,CG,CF,S 2>/dev/null)" ]; then return 0; fi
        sleep 1
    done
    fail "jobs $1 still queued after 600 s: $(squeue)"
}
# Checks every run of $1 against the same run of $2: weights and tables byte for byte,
# summaries equal but for wall times.
same_results() {
    local n=0 run id
    for run in "$1"/runs/*/; do
        id=$(basename "$run")
        for file in weights.safetensors metrics.parquet gradflow.parquet; do
            cmp -s "$run/$file" "$2/runs/$id/$file" || fail "$id/$file differs from the local run"
        done
        diff <(grep -vE '^(wall_s|samples_per_s|peak_rss_mb):' "$run/summary.yaml") \
             <(grep -vE '^(wall_s|samples_per_s|peak_rss_mb):' "$2/runs/$id/summary.yaml") \
            >/dev/null || fail "$id/summary.yaml differs from the local run"
        n=$((n + 1))
    done
    [ "$n" = "$(ls "$2/runs" | wc -l)" ] || fail "$1 has $n runs, the local run $(ls "$2/runs" | wc -l)"
    echo "  $n runs bit-identical to the local run"
}
# Checks that every run of $1 finished training exactly once over all its array logs.
once_each() {
    local run id count
    for run in "$1"/runs/*/; do
        id=$(basename "$run")
        count=$(cat "$1"/slurm/*_*.out | grep -c "^$id seed .*: Done after" || true)
        [ "$count" = 1 ] || fail "run $id finished $count times in the array's logs"
    done
    echo "  every run finished training exactly once"
}

section "a sweep as a job array of 3 tasks, and its report job"
submit "$work/quick.yaml" --out "$work/slurm" --tasks 3 --cpus-per-task 1
wait_jobs "$array_job,$report_job"
"$rnnlab" status "$work/slurm/quick"
[ -s "$work/slurm/quick/REPORT.md" ] || fail "the report job wrote no REPORT.md: $(cat "$work"/slurm/quick/slurm/*report.out)"
"$rnnlab" run "$work/quick.yaml" --out "$work/local" --jobs 2 --no-report >/dev/null 2>&1
same_results "$work/slurm/quick" "$work/local/quick"
once_each "$work/slurm/quick"

section "one task cancelled mid-run, then the sweep submitted again"
submit "$work/cut.yaml" --out "$work/slurm" --tasks 3 --cpus-per-task 1
for _ in $(seq 120); do
    if ls "$work"/slurm/cut/runs/*/checkpoint.safetensors >/dev/null 2>&1 \
        && squeue -h -j "${array_job}_1" -t R 2>/dev/null | grep -q .; then break; fi
    sleep 0.5
done
scancel "${array_job}_1"
wait_jobs "$array_job,$report_job"
"$rnnlab" status "$work/slurm/cut" | tee "$work/status.txt"
grep -q '^done 6,' "$work/status.txt" && fail "the cancelled task's runs completed anyway"
submit "$work/cut.yaml" --out "$work/slurm" --tasks 3 --cpus-per-task 1
wait_jobs "$array_job,$report_job"
"$rnnlab" status "$work/slurm/cut" > "$work/status.txt"
grep -q '^done 6,' "$work/status.txt" || fail "runs left after the resubmission: $(cat "$work/status.txt")"
"$rnnlab" run "$work/cut.yaml" --out "$work/local" --jobs 2 --no-report >/dev/null 2>&1
same_results "$work/slurm/cut" "$work/local/cut"
once_each "$work/slurm/cut"

section "a task requeued mid-run (scontrol requeue) resumes its runs"
sed -e 's/^name: cut/name: requeued/' "$work/cut.yaml" > "$work/requeued.yaml"
submit "$work/requeued.yaml" --out "$work/slurm" --tasks 3 --cpus-per-task 1
for _ in $(seq 120); do
    if ls "$work"/slurm/requeued/runs/*/checkpoint.safetensors >/dev/null 2>&1 \
        && squeue -h -j "${array_job}_1" -t R 2>/dev/null | grep -q .; then break; fi
    sleep 0.5
done
scontrol requeue "${array_job}_1"
# Slurm holds a requeued job back for a while (its begin time moves ~2 minutes ahead);
# the test lets it start as soon as it is pending again.
for _ in $(seq 60); do
    if squeue -h -j "${array_job}_1" -t PD 2>/dev/null | grep -q .; then
        scontrol update JobId="${array_job}_1" StartTime=now 2>/dev/null && break
    fi
    sleep 0.5
done
wait_jobs "$array_job,$report_job"
"$rnnlab" status "$work/slurm/requeued" > "$work/status.txt"
grep -q '^done 6,' "$work/status.txt" || fail "runs left after the requeue: $(cat "$work/status.txt")"
scontrol show job "${array_job}_1" | grep -q 'Restarts=1' \
    || fail "task 1 was not requeued: $(scontrol show job "${array_job}_1")"
sed -e 's/^name: requeued/name: cut/' "$work/requeued.yaml" | cmp -s - "$work/cut.yaml" \
    || fail "requeued.yaml is not cut.yaml renamed"
for run in "$work"/slurm/requeued/runs/*/; do
    # Same configuration and seed as in `cut` (the id hashes neither the name nor paths).
    id=$(basename "$run")
    cmp -s "$run/weights.safetensors" "$work/local/cut/runs/$id/weights.safetensors" \
        || fail "requeued run $id differs from the local run"
done
once_each "$work/slurm/requeued"

section "a tuned sweep: the tasks share the tuning trials, then shard the evaluation"
cat > "$work/tuned.yaml" <<YAML
name: tuned
description: two arms, each tuned, for the Slurm test
seeds: [0, 1]
base:
  task: { kind: adding, seq_len: 10 }
  model: { cell: lstm, hidden: 8 }
  train: { optimizer: adam, lr: 1.0e-3, steps: 90, batch_size: 16, eval_every: 30, eval_samples: 64 }
sweep:
  model.cell: [lstm, gru]
tuning:
  space:
    train.lr: { log_uniform: [1.0e-3, 1.0e-1] }
  trials: 6
  seeds: [100, 101]
  min_steps: 10
  eta: 3
YAML
submit "$work/tuned.yaml" --out "$work/slurm" --tasks 3 --cpus-per-task 1
wait_jobs "$array_job,$report_job"
"$rnnlab" run "$work/tuned.yaml" --out "$work/local" --jobs 2 --no-report >/dev/null 2>&1
cmp -s "$work/slurm/tuned/tuning.yaml" "$work/local/tuned/tuning.yaml" \
    || fail "tuning.yaml differs: $(diff "$work/slurm/tuned/tuning.yaml" "$work/local/tuned/tuning.yaml" | head)"
same_results "$work/slurm/tuned" "$work/local/tuned"
once_each "$work/slurm/tuned"
[ -s "$work/slurm/tuned/REPORT.md" ] || fail "no report for the tuned sweep"

section "a complete sweep submits nothing"
"$rnnlab" slurm "$work/cut.yaml" --out "$work/slurm" --tasks 3 > "$work/again.txt"
grep -q 'nothing submitted' "$work/again.txt" || fail "rnnlab slurm submitted a complete sweep"
[ "$(grep -c array_job "$work/slurm/cut/slurm/jobs.yaml")" = 2 ] || fail "jobs.yaml: $(cat "$work/slurm/cut/slurm/jobs.yaml")"

echo "slurm test passed in $((SECONDS - started)) s"
