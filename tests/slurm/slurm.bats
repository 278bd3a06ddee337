#!/usr/bin/env bats
# tpar --slurm on a real one-node Slurm cluster (scripts/slurm start; the
# node advertises 8 CPUs).  Run by scripts/test after it starts the
# cluster; by hand:  scripts/slurm start && bats tests/slurm; scripts/slurm stop

load ../cli/test_helper

setup() {
    WORKER=${TPAR_WORKER:-$BUILD_DIR/pyworker/tpar-worker}
    D=$BATS_TEST_TMPDIR
    cd "$D"
    scripts_slurm="$REPO_ROOT/scripts/slurm"
    "$scripts_slurm" status >/dev/null || fail "the Slurm cluster is not up (scripts/slurm start)"
}

teardown() {
    scancel --quiet -u "$(id -un)" 2>/dev/null || true
    pkill -KILL -f "$WORKER .*--connect" 2>/dev/null || true
}

remote_left() { pgrep -f "$WORKER .*--connect" || true; }

# Nothing of ours runs any more: no remote worker, no job or step.
assert_all_gone() {
    local deadline=$((SECONDS + 15)) w q
    while :; do
        w=$(remote_left)
        q=$(squeue -h -u "$(id -un)" 2>/dev/null)
        [ -z "$w" ] && [ -z "$q" ] && return 0
        if [ $SECONDS -ge $deadline ]; then
            fail "still running: workers [$w] jobs [$q]"
            return 1
        fi
        sleep 0.2
    done
}

strip() { jq -c 'del(.worker, .duration)' "$1" | sort; }

mixed_jobs() {
    mkdir -p "$D/bar"
    for t in a b c d; do job jobs:barrier "[\"$D/bar\", \"$t\", 4]" '' "\"$t\""; done
    for i in $(seq 1 80); do
        case $((i % 8)) in
            0) printf '{"id": %d, "fn": "jobs:fail", "args": ["no"]}\n' "$i" ;;
            1) echo "{\"id\": $i, \"fn\": 12}" ;;
            *) printf '{"id": %d, "fn": "jobs:add", "args": [%d, 1]}\n' "$i" "$i" ;;
        esac
    done
    job jobs:text '[300000]' '' '"text"'
}

@test "slurm: the same records locally and under --slurm, in salloc and sbatch; four tasks run at once" {
    mixed_jobs >"$D/in.jsonl"
    run tpar -I "$FIXTURES" -j 4 -o "$D/local.jsonl" "$D/in.jsonl"
    [ "$status" -eq 20 ]
    rm -rf "$D/bar"; mkdir "$D/bar"
    run timeout 60 salloc -n 4 "$TPAR" --slurm -I "$FIXTURES" -o "$D/salloc.jsonl" "$D/in.jsonl"
    [ "$status" -eq 20 ] || { echo "$output"; false; }
    assert_one_record_per_line "$D/in.jsonl" "$D/salloc.jsonl"
    diff <(strip "$D/local.jsonl") <(strip "$D/salloc.jsonl")
    rm -rf "$D/bar"; mkdir "$D/bar"
    run timeout 60 sbatch --wait -n 4 -o "$D/sbatch.log" \
        --wrap "$TPAR --slurm -I $FIXTURES -o $D/sbatch.jsonl $D/in.jsonl"
    cat "$D/sbatch.log"
    assert_one_record_per_line "$D/in.jsonl" "$D/sbatch.jsonl"
    diff <(strip "$D/local.jsonl") <(strip "$D/sbatch.jsonl")
    assert_all_gone
}

@test "slurm: a remote worker SIGKILLed mid-stream: one record per id, its job retried, nothing left" {
    mkdir "$D/b"
    {
        job jobs:block "[\"$D/b\", \"k\"]" '' '"victim"'
        for i in $(seq 1 300); do printf '{"id": %d, "fn": "jobs:add", "args": [%d, 0]}\n' "$i" "$i"; done
    } >"$D/in.jsonl"
    timeout 60 salloc -n 3 "$TPAR" --slurm -I "$FIXTURES" --retries 1 \
        -o "$D/out.jsonl" "$D/in.jsonl" 2>"$D/err" &
    pid=$!
    wait_files "$D/b" started.k 1
    kill -KILL "$(cat "$D/b/started.k")"
    touch "$D/b/release"
    wait "$pid" || { cat "$D/err"; false; }
    assert_one_record_per_line "$D/in.jsonl" "$D/out.jsonl"
    run jq -r 'select(.id == "victim") | "\(.status) \(.attempts)"' "$D/out.jsonl"
    assert_output "ok 2"
    assert_all_gone
}

@test "slurm: scancel of the workers' step: every worker gone, 255, one record per job read, nothing left" {
    mkdir "$D/b"
    {
        for t in a b; do job jobs:block "[\"$D/b\", \"$t\"]" '' "\"$t\""; done
        for i in $(seq 1 50); do printf '{"id": %d, "fn": "jobs:add", "args": [%d, 0]}\n' "$i" "$i"; done
    } >"$D/in.jsonl"
    timeout 60 salloc -n 2 "$TPAR" --slurm -I "$FIXTURES" \
        -o "$D/out.jsonl" "$D/in.jsonl" 2>"$D/err" &
    pid=$!
    wait_files "$D/b" started. 2
    step=$(squeue -h -s -u "$(id -un)" -o %i | grep -v '\.extern' | head -1)
    [ -n "$step" ]
    scancel "$step"
    status=0
    wait "$pid" || status=$?
    cat "$D/err"
    [ "$status" -eq 255 ]
    grep -q "every remote worker is gone" "$D/err"
    assert_jsonl "$D/out.jsonl"
    [ "$(jq -s '[.[] | .seq] | length' "$D/out.jsonl")" -eq \
      "$(jq -s '[.[] | .seq] | unique | length' "$D/out.jsonl")" ]
    [ "$(jq -r 'select(.id == "a") | .status' "$D/out.jsonl")" = broken ]
    assert_all_gone
}

@test "slurm: tpar SIGKILLed: its workers see the connection end, the step and allocation end" {
    mkdir "$D/b"
    job jobs:child_block "[\"$D/b\", \"c\"]" '' '"c"' >"$D/in.jsonl"
    timeout 60 salloc -n 2 "$TPAR" --slurm -I "$FIXTURES" "$D/in.jsonl" >/dev/null 2>"$D/err" &
    wait_files "$D/b" child.c 1
    child=$(cat "$D/b/child.c")
    kill -KILL "$(pgrep -n -f "^$TPAR --slurm")"
    wait || true
    assert_pids_gone "$child"
    assert_all_gone
}

@test "slurm: the Trio package: run_sync on srun tasks, kill_on_cancel, BrokenWorkerError; nothing left" {
    run timeout 90 env TPAR_WORKER="$WORKER" \
        PYTHONPATH="$BUILD_DIR/python:$REPO_ROOT/tests/python${PYTHONPATH:+:$PYTHONPATH}" \
        salloc -n 3 "$(real_python)" "$REPO_ROOT/tests/slurm/trio_remote.py"
    echo "$output"
    [ "$status" -eq 0 ]
    assert_output --partial OK
    assert_all_gone
}
