#!/usr/bin/env bats
# Signals, SIGPIPE, tpar's own death and --resume (issue 3).

load test_helper

setup() {
    D="$BATS_TEST_TMPDIR"
}

teardown() {
    exec 5>&- 2>/dev/null || true
    # Whatever happened, leave no tpar of this test behind.
    if [ -n "${TPAR_PID:-}" ] && kill -0 "$TPAR_PID" 2>/dev/null; then
        kill -KILL "$TPAR_PID" 2>/dev/null || true
    fi
    touch "$D/release"
    # Children of jobs that outlived a test that failed: not for the next one.
    local p
    for p in $(file_values "$D" child.); do
        kill -KILL "$p" 2>/dev/null || true
    done
}

# wait_stderr: waits (up to 20 s) until tpar has said something on stderr.
wait_stderr() {
    local deadline=$((SECONDS + 20))
    until [ -s "$D/err" ]; do
        if [ $SECONDS -ge $deadline ]; then
            fail "tpar said nothing on stderr after the signal"
            return 1
        fi
        sleep 0.02
    done
}

# two_running: starts tpar on a FIFO that stays open, with jobs a and b
# blocked in two workers (FIFO on fd 5).
two_running() {
    mkfifo "$D/fifo"
    start_tpar "$D/fifo" "$D/out" "$D/err" -I "$FIXTURES" -j2 "$@"
    exec 5>"$D/fifo"
    job jobs:block "[\"$D\", \"a\"]" '' '"a"' >&5
    job jobs:child_block "[\"$D\", \"b\"]" '' '"b"' >&5
    wait_files "$D" started. 2
}

@test "SIGINT once: stop reading, let running jobs finish, write their results, exit 130" {
    job jobs:block "[\"$D\", \"a\"]" '' '"a"' >"$D/in"
    job jobs:block "[\"$D\", \"b\"]" '' '"b"' >>"$D/in"
    mkfifo "$D/fifo"
    start_tpar "$D/fifo" "$D/out" "$D/err" -I "$FIXTURES" -j2
    exec 5>"$D/fifo"
    cat "$D/in" >&5
    wait_files "$D" started. 2
    kill -INT "$TPAR_PID"
    wait_stderr
    # Input is still open: tpar must not wait for more of it.
    touch "$D/release"
    wait_tpar
    exec 5>&-
    assert_equal "$TPAR_STATUS" 130
    assert_jsonl "$D/out"
    run -0 jq -s -r 'map("\(.id)=\(.status)") | sort | join(" ")' "$D/out"
    assert_output 'a=ok b=ok'
    assert_pids_gone $(file_values "$D" started.) $(worker_pids "$D/out")
}

@test "SIGINT once from a file: every job that ran is reported, none twice" {
    {
        job jobs:block "[\"$D\", \"a\"]" '' '"a"'
        jobs_n 5 jobs:log "[\"$D/ran\", .]"
    } >"$D/in"
    start_tpar "$D/in" "$D/out" "$D/err" -I "$FIXTURES" -j1
    wait_files "$D" started. 1
    kill -INT "$TPAR_PID"
    wait_stderr
    touch "$D/release"
    wait_tpar
    assert_equal "$TPAR_STATUS" 130
    assert_jsonl "$D/out"
    run -0 jq -r 'select(.id == "a") | .status' "$D/out"
    assert_output ok
    # Nothing is reported twice, and a job that ran is reported.
    run -0 jq -s -c 'map(.seq) | length == (unique | length)' "$D/out"
    assert_output true
    local ran=0
    [ -f "$D/ran" ] && ran=$(wc -l <"$D/ran")
    [ "$(count_status "$D/out" ok)" -ge $((ran + 1)) ] ||
        fail "$ran log jobs ran but only $(count_status "$D/out" ok) ok records"
}

@test "SIGINT twice: running jobs are killed with their children, status cancelled, exit 130" {
    two_running
    kill -INT "$TPAR_PID"
    wait_stderr
    kill -INT "$TPAR_PID"
    wait_tpar
    exec 5>&-
    assert_equal "$TPAR_STATUS" 130
    assert_jsonl "$D/out"
    run -0 jq -s -r 'map("\(.id)=\(.status)") | sort | join(" ")' "$D/out"
    assert_output 'a=cancelled b=cancelled'
    assert_pids_gone $(file_values "$D" started.) $(file_values "$D" child.)
}

@test "SIGINT: results computed before the signal are written" {
    {
        jobs_n 3 jobs:ident "[.]"
        job jobs:block "[\"$D\", \"a\"]" '' '"a"'
    } >"$D/in"
    start_tpar "$D/in" "$D/out" "$D/err" -I "$FIXTURES" -j1
    wait_files "$D" started. 1
    kill -INT "$TPAR_PID"
    wait_stderr
    kill -INT "$TPAR_PID"
    wait_tpar
    assert_equal "$TPAR_STATUS" 130
    assert_one_record_per_line "$D/in" "$D/out"
    run -0 jq -s -r 'sort_by(.seq) | map(.status) | join(" ")' "$D/out"
    assert_output 'ok ok ok cancelled'
}

@test "SIGTERM once: running jobs finish, exit 143" {
    two_running
    kill -TERM "$TPAR_PID"
    wait_stderr
    touch "$D/release"
    # b sleeps for good: a second SIGTERM ends it.
    # Results stream out as they complete: a's record comes while b runs.
    local deadline=$((SECONDS + 10))
    until jq -e 'select(.id == "a")' "$D/out" >/dev/null 2>&1; do
        kill -0 "$TPAR_PID" 2>/dev/null || break
        [ $SECONDS -lt $deadline ] || fail "no record for a within 10 s while b still runs"
        sleep 0.02
    done
    kill -TERM "$TPAR_PID"
    wait_tpar
    exec 5>&-
    assert_equal "$TPAR_STATUS" 143
    assert_jsonl "$D/out"
    run -0 jq -s -r 'map("\(.id)=\(.status)") | sort | join(" ")' "$D/out"
    assert_output 'a=ok b=cancelled'
    assert_pids_gone $(file_values "$D" started.) $(file_values "$D" child.)
}

@test "SIGTERM with nothing running: exit 143 at once" {
    mkfifo "$D/fifo"
    start_tpar "$D/fifo" "$D/out" "$D/err" -I "$FIXTURES"
    exec 5>"$D/fifo"
    job jobs:pidlog "[\"$D\"]" >&5
    wait_files "$D" pid. 1
    kill -TERM "$TPAR_PID"
    wait_tpar
    exec 5>&-
    assert_equal "$TPAR_STATUS" 143
    assert_pids_gone $(file_values "$D" pid.)
}

@test "| head -1: tpar ends cleanly on SIGPIPE and ends its workers" {
    for i in $(seq 1 3000); do echo "{\"fn\":\"jobs:pidlog\",\"args\":[\"$D\"]}"; done >"$D/in"
    run -0 timeout -k 5 30 bash -c '
        set -o pipefail
        { echo $BASHPID >"$1/tpar.pid"; exec "$TPAR" -I "$FIXTURES" -j2 "$1/in" 2>"$1/err"; } | head -1
        echo "tpar status ${PIPESTATUS[0]}" >"$1/status"' _ "$D" 3>&-
    assert_equal "${#lines[@]}" 1
    assert_output_jsonl
    # Ended by SIGPIPE (141) or on its own after EPIPE; not a crash.
    run -0 cat "$D/status"
    assert_output --regexp '^tpar status (0|1|141)$'
    assert_pids_gone "$(cat "$D/tpar.pid")" $(file_values "$D" pid.)
    run -0 cat "$D/err"
    refute_output --regexp '(Segmentation|Aborted|AddressSanitizer)'
}

@test "tpar killed with SIGKILL: its workers die too" {
    two_running
    local workers
    workers=$(file_values "$D" started.)
    kill -KILL "$TPAR_PID"
    wait "$TPAR_PID" || true
    exec 5>&-
    assert_pids_gone $workers
    # And no tpar-worker of ours is left by name either.
    local p
    for p in $(pgrep -f tpar-worker || true); do
        # A zombie that init has yet to reap is gone for our purposes.
        case $(pid_state "$p") in
            "") continue ;;
            Z) [ "$(pid_ppid "$p")" = 1 ] && continue ;;
        esac
        case " $(echo $workers) " in
            *" $p "*) fail "worker $p still runs: $(ps -o pid,ppid,stat,args -p "$p")" ;;
        esac
    done
}

@test "tpar killed with SIGKILL: the processes its jobs started die too (no orphan)" {
    two_running
    kill -KILL "$TPAR_PID"
    wait "$TPAR_PID" || true
    exec 5>&-
    assert_pids_gone $(file_values "$D" started.) $(file_values "$D" child.)
}

@test "--resume FILE: an interrupted run continues where it stopped, keyed by id" {
    {
        job jobs:log "[\"$D/ran\", \"a\"]" '' '"a"'
        job jobs:log "[\"$D/ran\", \"b\"]" '' '"b"'
        job jobs:block "[\"$D\", \"c\"]" '' '"c"'
        job jobs:log "[\"$D/ran\", \"d\"]" '' '"d"'
        job jobs:fail '[]' '' '"e"'
    } >"$D/in"
    start_tpar "$D/in" "$D/run1" "$D/err" -I "$FIXTURES" -j1
    wait_files "$D" started.c 1
    kill -TERM "$TPAR_PID"
    wait_stderr
    kill -TERM "$TPAR_PID"
    wait_tpar
    assert_equal "$TPAR_STATUS" 143
    run -0 jq -s -r 'map(select(.status == "ok") | .id) | sort | join(" ")' "$D/run1"
    assert_output 'a b'
    # The CI job is run again on the same input, reordered: only the ids
    # without an ok record run.
    rm -f "$D/ran" "$D"/started.*
    touch "$D/release"
    { sed -n 5p "$D/in"; sed -n 1,4p "$D/in"; } >"$D/in2"
    run -1 tpar -I "$FIXTURES" -j1 --resume "$D/run1" -o "$D/run2" "$D/in2"
    run -0 cat "$D/ran"
    assert_output d
    [ -e "$D/started.c" ] || fail "job c did not run again"
    run -0 jq -s -r 'map("\(.id)=\(.status)") | sort | join(" ")' "$D/run2"
    assert_output 'c=ok d=ok e=error'
    # A third run with both outputs has nothing left but the failure, which
    # --resume-failed runs again (--resume counts it as done).
    rm -f "$D/ran" "$D"/started.*
    cat "$D/run1" "$D/run2" >"$D/both"
    run -0 tpar -I "$FIXTURES" --resume "$D/both" -o "$D/run3" "$D/in"
    run -0 cat "$D/run3"
    assert_output ''
    run -1 tpar -I "$FIXTURES" --resume-failed "$D/both" -o "$D/run3" "$D/in"
    [ ! -e "$D/ran" ] && [ ! -e "$D/started.c" ] || fail "an ok job ran again"
    run -0 jq -s -r 'map("\(.id)=\(.status)") | join(" ")' "$D/run3"
    assert_output 'e=error'
}
