#!/usr/bin/env bats
# The stream runner's workers: death, retries, timeouts, retirement, idle
# exit, --init, --joblog, --halt (issue 3).

load test_helper

setup() {
    D="$BATS_TEST_TMPDIR"
}

teardown() {
    # Children of jobs that outlived a test that failed: not for the next one.
    local p
    for p in $(file_values "$D" child.); do
        kill -KILL "$p" 2>/dev/null || true
    done
    touch "$D/go"
}

# all_pids: worker pids from the records plus those the jobs noted.
all_pids() {
    { worker_pids "$D/out"; file_values "$D" started.; file_values "$D" pid.; } | sort -un
}

# -- a worker that dies ------------------------------------------------------------

@test "broken: a worker killed with SIGKILL mid-stream; every other job still runs" {
    {
        jobs_n 5 jobs:ident "[.]"
        job jobs:sigkill "[\"$D/killed\"]" '' '"victim"'
        jobs_n 5 jobs:ident "[. + 5]"
    } >"$D/in"
    run -1 tpar -I "$FIXTURES" -j2 -o "$D/out" "$D/in"
    assert_one_record_per_line "$D/in" "$D/out"
    assert_equal "$(count_status "$D/out" ok)" 10
    local pid
    pid=$(cat "$D/killed")
    run -0 jq -r 'select(.id == "victim") | .status, .error.type, .error.message, .attempts, .worker' "$D/out"
    assert_line --index 0 broken
    assert_line --index 1 BrokenWorkerError
    assert_line --index 2 --regexp '(SIGKILL|signal 9)'
    assert_line --index 2 --partial "$pid"
    assert_line --index 3 1
    assert_line --index 4 "$pid"
    assert_pids_gone $(all_pids) "$pid"
}

@test "broken: without --retries a job that killed its worker runs once, even among pipelined jobs" {
    {
        jobs_n 20 jobs:ident "[.]"
        job jobs:sigkill_once "[\"$D/marker\"]" '' '"victim"'
        jobs_n 20 jobs:ident "[. + 20]"
    } >"$D/in"
    run -1 tpar -I "$FIXTURES" -j1 -o "$D/out" "$D/in"
    assert_one_record_per_line "$D/in" "$D/out"
    run -0 jq -r 'select(.id == "victim") | .status, .attempts' "$D/out"
    assert_output $'broken\n1'
    run -0 cat "$D/marker.runs"
    assert_equal "${#lines[@]}" 1
    assert_equal "$(count_status "$D/out" ok)" 40
}

@test "--retries: attempts counts every run of the job" {
    {
        jobs_n 20 jobs:ident "[.]"
        job jobs:sigkill_once "[\"$D/marker\"]" '' '"victim"'
        jobs_n 20 jobs:ident "[. + 20]"
    } >"$D/in"
    run -0 tpar -I "$FIXTURES" -j1 --retries 3 -o "$D/out" "$D/in"
    run -0 jq -r 'select(.id == "victim") | .attempts' "$D/out"
    assert_output "$(wc -l <"$D/marker.runs")"
    assert_output 2
}

@test "broken: SIGKILL from outside, mid-stream" {
    {
        job jobs:block "[\"$D\", \"a\"]" '' '"victim"'
        jobs_n 3 jobs:ident "[.]"
    } >"$D/in"
    start_tpar "$D/in" "$D/out" "$D/err" -I "$FIXTURES" -j2
    wait_files "$D" started.a 1
    local pid
    pid=$(cat "$D/started.a")
    kill -KILL "$pid"
    wait_tpar
    assert_equal "$TPAR_STATUS" 1
    assert_one_record_per_line "$D/in" "$D/out"
    run -0 jq -r 'select(.id == "victim") | .status, .error.message' "$D/out"
    assert_line --index 0 broken
    assert_line --index 1 --regexp '(SIGKILL|signal 9)'
    assert_pids_gone $(all_pids)
}

@test "--retries: a job whose worker is SIGKILLed from outside runs again, in a new worker" {
    {
        job jobs:block "[\"$D\", \"a\"]" '' '"victim"'
        jobs_n 3 jobs:ident "[.]"
    } >"$D/in"
    start_tpar "$D/in" "$D/out" "$D/err" -I "$FIXTURES" -j2 --retries 1
    wait_files "$D" started.a 1
    local first
    first=$(cat "$D/started.a")
    rm "$D/started.a"
    kill -KILL "$first"
    # The second attempt starts; let it finish.
    wait_files "$D" started.a 1
    touch "$D/release"
    wait_tpar
    assert_equal "$TPAR_STATUS" 0
    assert_one_record_per_line "$D/in" "$D/out"
    run -0 jq -r 'select(.id == "victim") | .status, .attempts, .worker' "$D/out"
    assert_line --index 0 ok
    assert_line --index 1 2
    [ "${lines[2]}" != "$first" ] || fail "the retry ran in the dead worker's pid"
    assert_pids_gone $(all_pids) "$first"
}

@test "broken: a segfault and os._exit(3) mid-stream" {
    {
        job jobs:segv "[\"$D/p1\"]" '' '"segv"'
        job jobs:ident '[1]'
        job jobs:exit3 "[\"$D/p2\"]" '' '"exit3"'
        job jobs:ident '[2]'
    } >"$D/in"
    run -2 tpar -I "$FIXTURES" -j1 -o "$D/out" "$D/in"
    assert_one_record_per_line "$D/in" "$D/out"
    run -0 jq -r 'select(.id == "segv") | .status, .error.message' "$D/out"
    assert_line --index 0 broken
    assert_line --index 1 --regexp '(SIGSEGV|signal 11)'
    run -0 jq -r 'select(.id == "exit3") | .status, .error.message' "$D/out"
    assert_line --index 0 broken
    assert_line --index 1 --partial 'code 3'
    assert_pids_gone $(all_pids) "$(cat "$D/p1")" "$(cat "$D/p2")"
}

@test "--retries N: a job whose worker died runs again in a new worker" {
    {
        job jobs:ident '[1]'
        job jobs:sigkill_once "[\"$D/marker\"]" '' '"flaky"'
        job jobs:ident '[2]'
    } >"$D/in"
    run -0 tpar -I "$FIXTURES" -j2 --retries 1 -o "$D/out" "$D/in"
    assert_one_record_per_line "$D/in" "$D/out"
    assert_equal "$(count_status "$D/out" ok)" 3
    run -0 jq -r 'select(.id == "flaky") | .attempts, .value' "$D/out"
    assert_line --index 0 2
    [ "${lines[1]}" != "$(cat "$D/marker")" ] || fail "the retry ran in the dead worker's pid"
    assert_pids_gone $(all_pids) "$(cat "$D/marker")"
}

@test "--retries N: a job that always breaks gives up after N+1 attempts" {
    job jobs:sigkill '[]' '' '"doomed"' >"$D/in"
    job jobs:ident '[1]' >>"$D/in"
    run -1 tpar -I "$FIXTURES" --retries 2 -o "$D/out" "$D/in"
    assert_one_record_per_line "$D/in" "$D/out"
    run -0 jq -r 'select(.id == "doomed") | .status, .attempts' "$D/out"
    assert_output $'broken\n3'
}

@test "--retries: errors are not retried by default, --retry-on error retries them" {
    job jobs:fail_once "[\"$D/marker\"]" '' '"f"' >"$D/in"
    run -1 tpar -I "$FIXTURES" --retries 3 -o "$D/out" "$D/in"
    run -0 jq -r '.status, .attempts' "$D/out"
    assert_output $'error\n1'
    rm "$D/marker"
    run -0 tpar -I "$FIXTURES" --retries 3 --retry-on error -o "$D/out" "$D/in"
    run -0 jq -r '.status, .attempts, .value' "$D/out"
    assert_output $'ok\n2\nok'
    # --retry-on broken does not cover errors.
    rm "$D/marker"
    run -1 tpar -I "$FIXTURES" --retries 3 --retry-on broken -o "$D/out" "$D/in"
    run -0 jq -r '.status, .attempts' "$D/out"
    assert_output $'error\n1'
}

@test "--retry-on broken,timeout,error: timeouts can be retried" {
    job jobs:sleep_once "[\"$D/marker\"]" >"$D/in"
    run -0 tpar -I "$FIXTURES" --timeout 0.3 --retries 1 --retry-on broken,timeout,error -o "$D/out" "$D/in"
    run -0 jq -r '.status, .attempts' "$D/out"
    assert_output $'ok\n2'
    assert_pids_gone "$(cat "$D/marker")"
}

@test "--retries: an error that keeps failing uses every attempt" {
    job jobs:fail '[]' >"$D/in"
    run -1 tpar -I "$FIXTURES" --retries 2 --retry-on error -o "$D/out" "$D/in"
    run -0 jq -r '.status, .attempts' "$D/out"
    assert_output $'error\n3'
}

# -- timeouts ----------------------------------------------------------------------

@test "--timeout: the job is killed with the processes it started; status timeout" {
    {
        job jobs:child_block "[\"$D\", \"a\"]" '' '"slow"'
        job jobs:ident '[1]'
        job jobs:ident '[2]'
    } >"$D/in"
    run -1 tpar -I "$FIXTURES" -j2 --timeout 0.5 -o "$D/out" "$D/in"
    assert_one_record_per_line "$D/in" "$D/out"
    assert_equal "$(count_status "$D/out" ok)" 2
    run -0 jq -r 'select(.id == "slow") | .status, (.error.message | length > 0), .attempts' "$D/out"
    assert_output $'timeout\ntrue\n1'
    assert_pids_gone "$(cat "$D/child.a")" "$(cat "$D/started.a")" $(all_pids)
}

@test "--timeout: only the job that ran too long times out, not those queued with it" {
    {
        jobs_n 20 jobs:ident "[.]"
        job jobs:child_block "[\"$D\", \"a\"]" '' '"slow"'
        jobs_n 20 jobs:ident "[. + 20]"
    } >"$D/in"
    run -1 tpar -I "$FIXTURES" -j1 --timeout 0.3 -o "$D/out" "$D/in"
    assert_one_record_per_line "$D/in" "$D/out"
    assert_equal "$(count_status "$D/out" ok)" 40
    run -0 jq -r 'select(.id == "slow") | .status, .attempts' "$D/out"
    assert_output $'timeout\n1'
    run -0 jq -s -c 'map(.attempts) | unique' "$D/out"
    assert_output '[1]'
    assert_pids_gone "$(cat "$D/child.a")" $(all_pids)
}

@test "timeout in a job line applies to that job only" {
    {
        jq -nc --arg d "$D" '{id: "slow", fn: "jobs:child_block", args: [$d, "a"], timeout: 0.3}'
        jq -nc '{id: "quick", fn: "jobs:ident", args: [1], timeout: 30}'
        jq -nc '{id: "plain", fn: "jobs:ident", args: [2]}'
    } >"$D/in"
    run -1 tpar -I "$FIXTURES" -j2 -o "$D/out" "$D/in"
    run -0 jq -s -r 'sort_by(.id) | map("\(.id)=\(.status)") | join(" ")' "$D/out"
    assert_output 'plain=ok quick=ok slow=timeout'
    assert_pids_gone "$(cat "$D/child.a")" "$(cat "$D/started.a")"
}

@test "a job's own timeout holds when shorter than that of the job before it on its worker" {
    {
        jobs_n 50 operator:add "[1, 2]"
        jq -nc '{id: "slow", fn: "time:sleep", args: [3], timeout: 0.5}'
    } >"$D/in"
    run -1 tpar -j1 --timeout 60 -o "$D/out" "$D/in"
    assert_equal "$(count_status "$D/out" ok)" 50
    run -0 jq -r 'select(.id == "slow") | .status' "$D/out"
    assert_output timeout
}

@test "a job's own timeout longer than that of the job before it is not cut short" {
    {
        jq -nc '{id: "quick", fn: "time:sleep", args: [0.01], timeout: 0.3}'
        jq -nc '{id: "long", fn: "time:sleep", args: [0.6]}'
    } >"$D/in"
    run -0 tpar -j1 --timeout 30 -o "$D/out" "$D/in"
    run -0 jq -s -r 'sort_by(.id) | map("\(.id)=\(.status)") | join(" ")' "$D/out"
    assert_output 'long=ok quick=ok'
}

@test "--timeout: jobs that finish in time are not touched" {
    jobs_n 3 jobs:ident "[.]" >"$D/in"
    run -0 tpar -I "$FIXTURES" --timeout 20 -o "$D/out" "$D/in"
    assert_equal "$(count_status "$D/out" ok)" 3
}

# -- retirement -----------------------------------------------------------------------

@test "--max-tasks-per-worker N: a worker retires after N jobs" {
    jobs_n 4 jobs:pid '[]' >"$D/in"
    run -0 tpar -I "$FIXTURES" -j1 --max-tasks-per-worker 1 -o "$D/out" "$D/in"
    assert_equal "$(worker_pids "$D/out" | wc -l)" 4
    run -0 jq -s -c 'map(.value == .worker) | unique' "$D/out"
    assert_output '[true]'
    assert_pids_gone $(worker_pids "$D/out")
    run -0 tpar -I "$FIXTURES" -j1 --max-tasks-per-worker 2 -o "$D/out" "$D/in"
    assert_equal "$(worker_pids "$D/out" | wc -l)" 2
}

@test "--max-worker-rss SIZE: a worker above SIZE after a job is retired" {
    {
        job jobs:alloc '[120]'
        job jobs:pid '[]'
    } >"$D/in"
    run -0 tpar -I "$FIXTURES" -j1 -k --max-worker-rss 60M -o "$D/out" "$D/in"
    run -0 jq -s -r 'map(.value) | .[0] != .[1]' "$D/out"
    assert_output true
    assert_pids_gone $(worker_pids "$D/out")
    # Without the limit the same worker takes the second job.
    run -0 tpar -I "$FIXTURES" -j1 -k -o "$D/out" "$D/in"
    run -0 jq -s -r 'map(.value) | .[0] == .[1]' "$D/out"
    assert_output true
}

@test "--idle-timeout: an idle worker exits; the next job starts a new one" {
    mkfifo "$D/fifo"
    start_tpar "$D/fifo" "$D/out" "$D/err" -I "$FIXTURES" -j1 --idle-timeout 0.2
    exec 5>"$D/fifo"
    job jobs:pidlog "[\"$D\"]" >&5
    wait_files "$D" pid. 1
    local first
    first=$(file_values "$D" pid.)
    # The worker goes away by itself while tpar waits for input.
    assert_pids_gone "$first"
    rm -f "$D"/pid.*
    job jobs:pidlog "[\"$D\"]" >&5
    exec 5>&-
    wait_tpar
    assert_equal "$TPAR_STATUS" 0
    run -0 jq -s -r 'map(.value) | .[0] != .[1]' "$D/out"
    assert_output true
}

# -- --init ----------------------------------------------------------------------------

@test "--init MOD:FN runs once in each worker before its jobs" {
    jobs_n 6 jobs:init_token '[]' >"$D/in"
    run -0 tpar -I "$FIXTURES" -j2 --init jobs:init -o "$D/out" "$D/in"
    run -0 jq -s -c 'map(.value == "init-\(.worker)") | unique' "$D/out"
    assert_output '[true]'
    run -0 tpar -I "$FIXTURES" -j2 -o "$D/out" "$D/in"
    run -0 jq -s -c 'map(.value) | unique' "$D/out"
    assert_output '[null]'
}

@test "--init that fails: every job still gets one failed record, no hang" {
    jobs_n 3 jobs:ident "[.]" >"$D/in"
    run --separate-stderr tpar -I "$FIXTURES" --init jobs:init_fail -o "$D/out" "$D/in"
    [ "$status" -ge 1 ] && [ "$status" -le 101 ] || [ "$status" -eq 255 ] ||
        fail "exit status $status"
    if [ "$status" -ne 255 ]; then
        assert_one_record_per_line "$D/in" "$D/out"
        assert_equal "$(count_status "$D/out" ok)" 0
    fi
    assert_regex "$stderr" 'init fails on purpose|init'
}

# -- --joblog --------------------------------------------------------------------------------

@test "--joblog FILE: one JSON line per attempt" {
    {
        job jobs:ident '[1]' '' '"one"'
        job jobs:sigkill_once "[\"$D/marker\"]" '' '"flaky"'
        job jobs:fail '[]' '' '"bad"'
    } >"$D/in"
    run -1 tpar -I "$FIXTURES" --retries 1 --joblog "$D/log" -o "$D/out" "$D/in"
    assert_jsonl "$D/log"
    run -0 jq -s -r 'map(.id) | sort | join(" ")' "$D/log"
    assert_output 'bad flaky flaky one'
    run -0 jq -s -r 'map(select(.id == "flaky") | .status) | sort | join(" ")' "$D/log"
    assert_output 'broken ok'
    # The records on stdout are unchanged by it.
    assert_one_record_per_line "$D/in" "$D/out"
}

# -- --halt -----------------------------------------------------------------------------------

@test "--halt now,fail=1: the first failure kills the running jobs" {
    {
        job jobs:fail '[]' '' '"bad"'
        job jobs:child_block "[\"$D\", \"a\"]" '' '"slow"'
        job jobs:child_block "[\"$D\", \"b\"]" '' '"slow2"'
    } >"$D/in"
    run tpar -I "$FIXTURES" -j1 --halt now,fail=1 -o "$D/out" "$D/in"
    [ "$status" -ge 1 ] && [ "$status" -le 3 ] || fail "exit status $status"
    assert_jsonl "$D/out"
    assert_equal "$(count_status "$D/out" ok)" 0
    run -0 jq -r 'select(.id == "bad") | .status' "$D/out"
    assert_output error
    assert_pids_gone $(file_values "$D" child.) $(all_pids)
}

@test "--halt soon,fail=1: no new job starts, running jobs finish" {
    {
        job jobs:wait_then "[\"$D/go\", \"long\"]" '' '"long"'
        job jobs:fail '[]' '' '"bad"'
        jobs_n 20 jobs:log "[\"$D/ran\", .]"
    } >"$D/in"
    start_tpar "$D/in" "$D/out" "$D/err" -I "$FIXTURES" -j2 --halt soon,fail=1
    # Let the long job go only after the failure was seen.
    local deadline=$((SECONDS + 20))
    until grep -q '"bad"' "$D/out" 2>/dev/null || ! kill -0 "$TPAR_PID" 2>/dev/null ||
          [ $SECONDS -ge $deadline ]; do
        sleep 0.02
    done
    touch "$D/go"
    wait_tpar
    [ "$TPAR_STATUS" -ge 1 ] && [ "$TPAR_STATUS" -le 22 ] || fail "exit status $TPAR_STATUS"
    run -0 jq -r 'select(.id == "long") | .status' "$D/out"
    assert_output ok
    run -0 jq -r 'select(.id == "bad") | .status' "$D/out"
    assert_output error
    assert_jsonl "$D/out"
}

@test "--halt now,fail=N%: halts once that share of the jobs failed" {
    {
        job jobs:ident '[1]'
        job jobs:fail '[]'
        job jobs:fail '[]'
        job jobs:ident '[2]'
    } >"$D/in"
    run -2 tpar -I "$FIXTURES" -j1 -k --halt now,fail=90% -o "$D/out" "$D/in"
    assert_equal "$(count_status "$D/out" ok)" 2
}

# -- worker types, --preload, --prestart (issue 5) ------------------------------------------

# zygote_of PID: the forkserver among PID's children (its argv has --zygote).
zygote_of() {
    local c
    for c in $(tpar_children "$1"); do
        tr '\0' ' ' <"/proc/$c/cmdline" 2>/dev/null | grep -q -- '--zygote' && echo "$c"
    done
    return 0
}

@test "--worker-type forkserver: jobs run in forked workers; a segfault is broken, named" {
    {
        jobs_n 3 jobs:ident "[.]"
        job jobs:segv "[\"$D/p1\"]" '' '"segv"'
        jobs_n 3 jobs:ident "[. + 3]"
    } >"$D/in"
    run -1 tpar -I "$FIXTURES" -j2 --worker-type forkserver --preload json,math -o "$D/out" "$D/in"
    assert_one_record_per_line "$D/in" "$D/out"
    assert_equal "$(count_status "$D/out" ok)" 6
    run -0 jq -r 'select(.id == "segv") | .status, .error.message' "$D/out"
    assert_line --index 0 broken
    assert_line --index 1 --regexp '(SIGSEGV|signal 11)'
    assert_line --index 1 --partial "$(cat "$D/p1")"
    assert_pids_gone $(all_pids) "$(cat "$D/p1")"
}

@test "--worker-type forkserver: the forkserver killed, the next job still runs; none is left" {
    mkfifo "$D/fifo"
    start_tpar "$D/fifo" "$D/out" "$D/err" -I "$FIXTURES" -j1 --max-tasks-per-worker 1 \
        --worker-type forkserver
    exec 5>"$D/fifo"
    job jobs:pidlog "[\"$D\"]" >&5
    wait_files "$D" pid. 1
    local zygote
    zygote=$(zygote_of "$TPAR_PID")
    [ -n "$zygote" ] || fail "no forkserver among tpar's children: $(tpar_children "$TPAR_PID")"
    kill -KILL "$zygote"
    job jobs:pidlog "[\"$D\"]" >&5
    job jobs:pidlog "[\"$D\"]" >&5
    exec 5>&-
    wait_tpar
    assert_equal "$TPAR_STATUS" 0
    assert_equal "$(count_status "$D/out" ok)" 3
    assert_pids_gone "$zygote" $(worker_pids "$D/out")
}

@test "--worker-type spawn is the default; bad worker options are usage errors" {
    job jobs:pid '[]' >"$D/in"
    run -0 tpar -I "$FIXTURES" --worker-type spawn "$D/in"
    run -255 --separate-stderr tpar --worker-type thread "$D/in"
    [ "${#stderr_lines[@]}" -eq 1 ] || fail "one line expected: $stderr"
    run -255 --separate-stderr tpar --preload json "$D/in"
    [ "${#stderr_lines[@]}" -eq 1 ] || fail "one line expected: $stderr"
    run -255 --separate-stderr tpar --prestart many "$D/in"
    [ "${#stderr_lines[@]}" -eq 1 ] || fail "one line expected: $stderr"
}

@test "--prestart N: N workers start before the first job" {
    mkfifo "$D/fifo"
    start_tpar "$D/fifo" "$D/out" "$D/err" -I "$FIXTURES" -j2 --prestart 2
    exec 5>"$D/fifo"
    local deadline=$((SECONDS + 20)) kids
    until [ "$(tpar_children "$TPAR_PID" | wc -l)" -ge 2 ]; do
        [ $SECONDS -lt $deadline ] || fail "fewer than 2 workers before any job"
        sleep 0.02
    done
    kids=$(tpar_children "$TPAR_PID")
    jobs_n 2 jobs:pid '[]' >&5
    exec 5>&-
    wait_tpar
    assert_equal "$TPAR_STATUS" 0
    # The jobs ran in the prestarted workers.
    local w
    for w in $(worker_pids "$D/out"); do
        grep -qx "$w" <<<"$kids" || fail "worker $w was not prestarted ($kids)"
    done
    assert_pids_gone $kids
}

@test "workers of both types hold their two lanes, moved out of the job's way" {
    for wt in spawn forkserver; do
        run -0 --separate-stderr tpar run --worker-type "$wt" "$FIXTURES/jobs.py:lane_fds"
        # two memfds, at the high fds where the worker keeps its protocol fds
        run -0 jq -e '.value | length == 2 and min >= 100' <<<"$output"
    done
}
