#!/usr/bin/env bats
# Remote workers without Slurm: --launcher starts `tpar-worker --connect`
# here, and the workers dial back over loopback TCP.  The same records as
# local workers, deaths and timeouts handled as locally, every worker gone
# reported, nothing left running, and peers without the secret refused.

load test_helper

setup() {
    WORKER=${TPAR_WORKER:-$BUILD_DIR/pyworker/tpar-worker}
    D=$BATS_TEST_TMPDIR
    export TPAR_AUTH_TIMEOUT=3 # bad peers wait this long; a loaded machine needs the slack
}

teardown() {
    # Nothing of this test's may outlive it.
    pkill -KILL -f "$WORKER .*--connect" 2>/dev/null || true
}

# remote_pids: the supervisors and workers of --connect still running.
remote_pids() {
    pgrep -f "$WORKER .*--connect" || true
}

assert_no_remote_left() {
    local deadline=$((SECONDS + 10)) left
    while :; do
        left=$(remote_pids)
        [ -z "$left" ] && return 0
        if [ $SECONDS -ge $deadline ]; then
            fail "remote workers still running: $(ps -o pid,ppid,stat,args -p "$(echo $left | tr ' ' ,)")"
            return 1
        fi
        sleep 0.1
    done
}

# strip FILE: records without the fields that differ between runs.
strip() {
    jq -c 'del(.worker, .duration)' "$1" | sort
}

mixed_jobs() {
    for i in $(seq 1 60); do
        case $((i % 6)) in
            0) printf '{"id": %d, "fn": "jobs:fail", "args": ["no"]}\n' "$i" ;;
            1) echo "{\"id\": $i, \"fn\": 12}" ;;
            *) printf '{"id": %d, "fn": "jobs:add", "args": [%d, 1]}\n' "$i" "$i" ;;
        esac
    done
    job jobs:big '[]' '' '"big"'
    job jobs:text '[300000]' '' '"text"'
}

@test "remote: --launcher workers give the same records as local ones" {
    mixed_jobs >"$D/in.jsonl"
    run tpar -I "$FIXTURES" -j 3 -o "$D/local.jsonl" "$D/in.jsonl"
    [ "$status" -eq 20 ]
    run tpar --launcher "$WORKER --connect {addr} --workers 3 -I $FIXTURES" \
        -o "$D/remote.jsonl" "$D/in.jsonl"
    [ "$status" -eq 20 ]
    assert_one_record_per_line "$D/in.jsonl" "$D/remote.jsonl"
    diff <(strip "$D/local.jsonl") <(strip "$D/remote.jsonl")
    # Both run -k in input order too.
    run tpar --launcher "$WORKER --connect {addr} --workers 2 -I $FIXTURES" -k \
        -o "$D/remote-k.jsonl" "$D/in.jsonl"
    diff <(jq -r .seq "$D/remote-k.jsonl") <(seq 1 62)
    assert_no_remote_left
}

@test "remote: -j bounds the remote workers used; extra ones are shut down" {
    for i in $(seq 1 40); do printf '{"id": %d, "fn": "jobs:pid"}\n' "$i"; done >"$D/in.jsonl"
    run tpar --launcher "$WORKER --connect {addr} --workers 4 -I $FIXTURES" -j 2 \
        -o "$D/out.jsonl" "$D/in.jsonl"
    [ "$status" -eq 0 ]
    assert_one_record_per_line "$D/in.jsonl" "$D/out.jsonl"
    [ "$(worker_pids "$D/out.jsonl" | wc -l)" -le 2 ]
    assert_no_remote_left
}

@test "remote: a worker SIGKILLed mid-stream: its job is retried, its queue requeued, one record each" {
    mkdir "$D/b"
    {
        job jobs:block "[\"$D/b\", \"k\"]" '' '"victim"'
        for i in $(seq 1 200); do printf '{"id": %d, "fn": "jobs:add", "args": [%d, 0]}\n' "$i" "$i"; done
    } >"$D/in.jsonl"
    start_tpar "$D/in.jsonl" "$D/out.jsonl" "$D/err" \
        --launcher "$WORKER --connect {addr} --workers 2 -I $FIXTURES" --retries 1
    wait_files "$D/b" started.k 1
    victim=$(cat "$D/b/started.k")
    kill -KILL "$victim"
    touch "$D/b/release"
    wait_tpar
    [ "$TPAR_STATUS" -eq 0 ] || { cat "$D/err"; false; }
    assert_one_record_per_line "$D/in.jsonl" "$D/out.jsonl"
    run jq -r 'select(.id == "victim") | "\(.status) \(.attempts)"' "$D/out.jsonl"
    assert_output "ok 2"
    assert_no_remote_left
}

@test "remote: --timeout kills the remote job and what it started; a fresh worker takes over" {
    mkdir "$D/b"
    {
        job jobs:child_block "[\"$D/b\", \"t\"]" '' '"slow"'
        for i in $(seq 1 20); do printf '{"id": %d, "fn": "jobs:add", "args": [%d, 0]}\n' "$i" "$i"; done
    } >"$D/in.jsonl"
    start_tpar "$D/in.jsonl" "$D/out.jsonl" "$D/err" \
        --launcher "$WORKER --connect {addr} --workers 1 -I $FIXTURES" --timeout 1
    wait_files "$D/b" child.t 1
    child=$(cat "$D/b/child.t")
    wpid=$(cat "$D/b/started.t")
    wait_tpar
    [ "$TPAR_STATUS" -eq 1 ] || { cat "$D/err"; false; }
    assert_one_record_per_line "$D/in.jsonl" "$D/out.jsonl"
    run jq -r 'select(.id == "slow") | .status' "$D/out.jsonl"
    assert_output timeout
    [ "$(count_status "$D/out.jsonl" ok)" -eq 20 ]
    assert_pids_gone "$wpid" "$child"
    # The other jobs ran on the worker that replaced it.
    run jq -r "select(.status == \"ok\") | .worker" "$D/out.jsonl"
    refute_output --partial "$wpid"
    assert_no_remote_left
}

@test "remote: a job sees no trace of the run's secret, in os.environ either (also when the worker runs inside its interpreter)" {
    # TPAR_LIBPYTHON= runs the core inside the interpreter (as for a Python
    # without a shared libpython): Python started before the supervisor
    # read the secret, and its os.environ kept a copy for every job.
    local lib
    for lib in default ""; do
        if [ "$lib" = default ]; then unset TPAR_LIBPYTHON; else export TPAR_LIBPYTHON=; fi
        run -0 --separate-stderr tpar --launcher "$WORKER --connect {addr} --workers 1" \
            <<<'{"fn": "os:getenv", "args": ["TPAR_SECRET"]}'
        assert_equal "$(jq -c '[.status, .value]' <<<"$output")" '["ok",null]'
    done
    unset TPAR_LIBPYTHON
    assert_no_remote_left
}

@test "remote: a launcher that starts no worker: a message and 255, one record per job read" {
    for i in $(seq 1 5); do printf '{"id": %d, "fn": "jobs:add", "args": [%d, 0]}\n' "$i" "$i"; done >"$D/in.jsonl"
    run -255 tpar --launcher "sh -c 'exit 3' {addr}" -o "$D/out.jsonl" "$D/in.jsonl"
    assert_output --partial "the launcher sh exited with code 3, and no worker connected"
    assert_jsonl "$D/out.jsonl"
    [ "$(count_status "$D/out.jsonl" ok)" -eq 0 ]
}

@test "remote: every worker gone mid-run (supervisor killed): a message and 255, never a hang" {
    mkdir "$D/b"
    {
        job jobs:block "[\"$D/b\", \"a\"]" '' '"a"'
        for i in $(seq 1 50); do printf '{"id": %d, "fn": "jobs:add", "args": [%d, 0]}\n' "$i" "$i"; done
    } >"$D/in.jsonl"
    start_tpar "$D/in.jsonl" "$D/out.jsonl" "$D/err" \
        --launcher "$WORKER --connect {addr} --workers 1 -I $FIXTURES"
    wait_files "$D/b" started.a 1
    wpid=$(cat "$D/b/started.a")
    sup=$(pid_ppid "$wpid")
    kill -KILL "$sup" # the launcher itself: its worker dies with it
    wait_tpar
    [ "$TPAR_STATUS" -eq 255 ]
    run cat "$D/err"
    assert_output --partial "every remote worker is gone"
    assert_jsonl "$D/out.jsonl"
    # Every job that was read has exactly one record.
    [ "$(jq -s '[.[] | .seq] | length' "$D/out.jsonl")" -eq \
      "$(jq -s '[.[] | .seq] | unique | length' "$D/out.jsonl")" ]
    run jq -r 'select(.id == "a") | .status' "$D/out.jsonl"
    assert_output broken
    assert_pids_gone "$wpid"
    assert_no_remote_left
}

@test "remote: tpar SIGKILLed: its remote workers see the connection end and exit" {
    mkdir "$D/b"
    job jobs:child_block "[\"$D/b\", \"c\"]" '' '"c"' >"$D/in.jsonl"
    start_tpar "$D/in.jsonl" "$D/out.jsonl" "$D/err" \
        --launcher "$WORKER --connect {addr} --workers 2 -I $FIXTURES"
    wait_files "$D/b" child.c 1
    child=$(cat "$D/b/child.c")
    kill -KILL "$TPAR_PID"
    wait "$TPAR_PID" || true
    assert_pids_gone "$child"
    assert_no_remote_left
}

@test "remote: peers without the secret are refused and logged; the run completes" {
    for i in $(seq 1 30); do printf '{"id": %d, "fn": "jobs:add", "args": [%d, 1]}\n' "$i" "$i"; done >"$D/in.jsonl"
    cat >"$D/launch.sh" <<EOF
#!/bin/sh
# Bad peers first, then a real worker; the secret is on our stdin.
"$(real_python)" "$FIXTURES/bad_peers.py" "\$1" silent garbage oversized wrongkey early-job >"$D/peers.txt" 2>&1 &
TPAR_SECRET=0000000000000000000000000000000000000000000000000000000000000000 \
    "$WORKER" --connect "\$1" 2>"$D/wrong.txt"
echo "wrong secret: exit \$?" >>"$D/wrong.txt"
wait
exec "$WORKER" --connect "\$1" -I "$FIXTURES"
EOF
    chmod +x "$D/launch.sh"
    run tpar --launcher "$D/launch.sh {addr}" -o "$D/out.jsonl" "$D/in.jsonl"
    [ "$status" -eq 0 ]
    [ "$(count_status "$D/out.jsonl" ok)" -eq 30 ]
    cat "$D/peers.txt"
    for kind in silent garbage oversized wrongkey early-job; do
        grep -q "^$kind: closed" "$D/peers.txt"
    done
    assert_output --partial "said nothing in time"
    assert_output --partial "not a tpar worker's handshake"
    assert_output --partial "oversized frame before authentication"
    assert_output --partial "wrong secret"
    [ "$(grep -c 'refused a connection from 127.0.0.1:' <<<"$output")" -ge 6 ]
    grep -q "wrong secret: exit 73" "$D/wrong.txt"
    [ ! -e /tmp/pwned ]
    assert_no_remote_left
}

@test "remote: usage errors" {
    run -255 tpar --listen 127.0.0.1:0 </dev/null
    assert_output --partial "--listen goes with --launcher or --slurm"
    run -255 tpar --launcher "ssh node7 tpar-worker --connect" </dev/null
    assert_output --partial "{addr}"
    run -255 tpar --launcher "ssh 'node7 {addr}" </dev/null
    assert_output --partial "unbalanced single quote"
    run -255 tpar --launcher "x {addr}" --listen nohost </dev/null
    assert_output --partial "--listen: expected ADDR:PORT"
    run -255 tpar --launcher "x {addr}" --worker-type forkserver </dev/null
    assert_output --partial "does not apply to remote workers"
    run -255 env -u SLURM_JOB_ID "$TPAR" --slurm </dev/null
    assert_output --partial "not inside a Slurm allocation"
    run -255 tpar --launcher "no-such-launcher-x {addr}" </dev/null
    assert_output --partial "cannot start the launcher no-such-launcher-x"
    run -255 tpar --launcher "x {addr}" --listen 203.0.113.9:0 </dev/null
    assert_output --partial "cannot listen on 203.0.113.9:0"
}

@test "remote: --joblog and --resume work as locally; a killed run goes on where it stopped" {
    for i in $(seq 1 40); do printf '{"id": %d, "fn": "jobs:add", "args": [%d, 0]}\n' "$i" "$i"; done >"$D/in.jsonl"
    head -15 "$D/in.jsonl" >"$D/first.jsonl"
    run tpar --launcher "$WORKER --connect {addr} --workers 2 -I $FIXTURES" \
        -o "$D/out.jsonl" --joblog "$D/log.jsonl" "$D/first.jsonl"
    [ "$status" -eq 0 ]
    [ "$(jq -s 'length' "$D/log.jsonl")" -eq 15 ]
    run tpar --launcher "$WORKER --connect {addr} --workers 2 -I $FIXTURES" \
        --resume "$D/out.jsonl" -o "$D/rest.jsonl" --summary "$D/in.jsonl"
    [ "$status" -eq 0 ]
    [ "$(count_status "$D/rest.jsonl" ok)" -eq 25 ]
    run jq -r 'select(.type == "summary") | .skipped' "$D/rest.jsonl"
    assert_output 15
    assert_no_remote_left
}
