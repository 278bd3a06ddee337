#!/usr/bin/env bats
# Scheduling: exact attempts under deep pipelining, work stealing, and the
# queued jobs taken back on --halt soon and on the first signal.  The
# assertions are on which worker ran what and how many jobs ran, never on
# wall time (the makespans are in scripts/bench, table "Scheduling").

load test_helper

setup() {
    D=$BATS_TEST_TMPDIR
}

# runs_of ID: how many times job ID ran (lines in $D/runs.ID).
runs_of() {
    if [ -f "$D/runs.$1" ]; then wc -l <"$D/runs.$1"; else echo 0; fi
}

# assert_attempts_exact OUT: every record's attempts is the number of times
# its job ran: a job that started counts, one that never started does not.
assert_attempts_exact() {
    local id att st runs bad=""
    while read -r id att st; do
        runs=$(runs_of "$id")
        [ "$att" -eq "$runs" ] || bad+="job $id: $st, attempts $att, ran $runs times; "
    done < <(jq -r 'select(.type == "result") | "\(.id) \(.attempts) \(.status)"' "$1")
    [ -z "$bad" ] || fail "$bad"
}

# slow_per_worker LOG: "count" per pid of the lines in LOG, sorted.
slow_per_worker() {
    grep -v FAIL "$1" | awk '{print $2}' | sort | uniq -c | awk '{print $1}' | sort -n | tr '\n' ' '
}

@test "attempts: a job that kills its worker once counts both runs under -j2 --retries 1" {
    for round in 1 2 3 4 5; do
        rm -f "$D"/runs.*
        jobs_n 6 schedjobs:die_once "[\"$D\", .]" |
            jq -c '. + {id: .args[1]}' >"$D/in"
        run -0 --separate-stderr tpar -I "$FIXTURES" -j2 --retries 1 "$D/in"
        printf '%s\n' "$output" >"$D/out"
        assert_one_record_per_line "$D/in" "$D/out"
        assert_equal "$(count_status "$D/out" ok)" 6
        assert_attempts_exact "$D/out"
    done
}

@test "attempts: killers among 400 instant jobs (deep pipelining), with and without --retries" {
    jq -nc --arg d "$D" 'range(1; 401) | {id: ., fn: (if . % 50 == 7 then
        "schedjobs:die_once" else "schedjobs:counted" end), args: [$d, .]}' >"$D/in"
    run -0 --separate-stderr tpar -I "$FIXTURES" -j2 --retries 1 "$D/in"
    printf '%s\n' "$output" >"$D/out"
    assert_one_record_per_line "$D/in" "$D/out"
    assert_equal "$(count_status "$D/out" ok)" 400
    assert_attempts_exact "$D/out"

    rm -f "$D"/runs.*
    run -8 --separate-stderr tpar -I "$FIXTURES" -j2 "$D/in"
    printf '%s\n' "$output" >"$D/out"
    assert_one_record_per_line "$D/in" "$D/out"
    assert_equal "$(count_status "$D/out" broken)" 8
    assert_equal "$(jq -r 'select(.status == "broken") | .id % 50' "$D/out" | sort -u)" 7
    assert_attempts_exact "$D/out"
}

@test "attempts: a killer that runs 0.3 s with jobs queued behind it is the one blamed" {
    # The killer runs 0.3 s before it dies, with instant jobs queued behind it.
    {
        jq -nc --arg d "$D" 'range(1; 201) | {id: ., fn: "schedjobs:counted", args: [$d, .]}'
        jq -nc --arg d "$D" '{id: 500, fn: "schedjobs:die_once", args: [$d, 500, 0.3]}'
        jq -nc --arg d "$D" 'range(201; 401) | {id: ., fn: "schedjobs:counted", args: [$d, .]}'
    } >"$D/in"
    run -1 --separate-stderr tpar -I "$FIXTURES" -j1 "$D/in"
    printf '%s\n' "$output" >"$D/out"
    assert_one_record_per_line "$D/in" "$D/out"
    assert_equal "$(jq -r 'select(.status != "ok") | "\(.id) \(.status)"' "$D/out")" "500 broken"
    assert_attempts_exact "$D/out"
}

@test "attempts: a job that kills its worker after it returned, every time, is blamed (not rerun forever)" {
    # Nothing runs when the worker dies; its progress says the job ended, so
    # its result died with the worker.  Rerunning it as innocent looped
    # forever (no record, no retries used up).
    jq -nc --arg d "$D" '{id: 1, fn: "schedjobs:dies_after_return", args: [$d, 1]}' >"$D/in"
    jq -nc --arg d "$D" 'range(2; 6) | {id: ., fn: "schedjobs:counted", args: [$d, .]}' >>"$D/in"
    TPAR_TEST_TIMEOUT=20 run -1 --separate-stderr tpar -I "$FIXTURES" -j1 --retries 2 "$D/in"
    printf '%s\n' "$output" >"$D/out"
    assert_one_record_per_line "$D/in" "$D/out"
    assert_equal "$(jq -r 'select(.id == 1) | "\(.status) \(.attempts) \(.error.type)"' "$D/out")" \
        "broken 3 BrokenWorkerError"
    assert_equal "$(count_status "$D/out" ok)" 4
    assert_attempts_exact "$D/out"
}

@test "stealing: -j2, 20 instant jobs then 10 x 0.5 s: the slow jobs run on both workers" {
    {
        jobs_n 20 schedjobs:counted "[\"$D\", .]"
        jobs_n 10 schedjobs:nap "[\"$D/slow\", ., 0.5]"
    } >"$D/in"
    run -0 tpar -I "$FIXTURES" -j2 --joblog "$D/log" "$D/in"
    [ "$(wc -l <"$D/slow")" -eq 10 ] || fail "slow jobs ran $(wc -l <"$D/slow") times"
    # Both workers ran about half of them (5 each; 3 or more when one
    # worker was slow to start), not one worker all ten.
    run slow_per_worker "$D/slow"
    assert_regex "$output" '^[3-7] [3-7] $'
}

@test "stealing: -j4, 5 instant jobs then 8 x 0.3 s: four workers run the slow jobs" {
    {
        jobs_n 5 schedjobs:counted "[\"$D\", .]"
        jobs_n 8 schedjobs:nap "[\"$D/slow\", ., 0.3]"
    } >"$D/in"
    run -0 tpar -I "$FIXTURES" -j4 "$D/in"
    # Two each; at least three workers even when one was slow to start.
    run slow_per_worker "$D/slow"
    assert_regex "$output" '^([123] ){3,4}$'
}

@test "stealing: 20 instant jobs then 6 CPU burns spread over both workers" {
    {
        jobs_n 20 schedjobs:counted "[\"$D\", .]"
        jobs_n 6 schedjobs:burn "[\"$D/slow\", ., 0.2]"
    } >"$D/in"
    run -0 tpar -I "$FIXTURES" -j2 "$D/in"
    run slow_per_worker "$D/slow"
    assert_regex "$output" '^[1-5] [1-5] $'
}

@test "stealing with --max-tasks-per-worker: jobs taken back do not count as the worker's tasks" {
    # A worker whose queued slow jobs were taken back had sent >= N but ran
    # fewer than N: it took nothing more and never retired, and one worker
    # ran nine of the ten slow jobs (5 and 5 with the fix).
    {
        jobs_n 20 operator:truth "[.]"
        jq -nc --arg log "$D/slow" 'range(21; 31) | {id: ., fn: "schedjobs:nap",
            args: [$log, ., 0.5]}'
    } >"$D/in"
    run -0 --separate-stderr tpar -I "$FIXTURES" -j2 --max-tasks-per-worker 15 "$D/in"
    printf '%s\n' "$output" >"$D/out"
    assert_one_record_per_line "$D/in" "$D/out"
    local most
    most=$(awk '{print $2}' "$D/slow" | sort | uniq -c | sort -n | tail -1 | awk '{print $1}')
    [ "$most" -le 7 ] || fail "one worker ran $most of the 10 slow jobs: $(slow_per_worker "$D/slow")"
}

@test "stealing races: many take-backs, jobs near their estimate, each runs exactly once" {
    # Batches of 100 instant jobs (the depth grows) and 6 of 2 to 7 ms,
    # trickled in: at the end of each batch the queue is empty and one
    # worker holds the slow jobs, so tpar takes them back, often while the
    # head is ending (a job may start while the TAKEBACK is on its way).
    local b
    for b in $(seq 20); do
        jq -nc --arg d "$D" --argjson b $b 'range(1; 107) | {id: ($b * 1000 + .),
            fn: "schedjobs:counted", args: [$d, ($b * 1000 + .),
            (if . <= 100 then 0 else 0.001 * (. - 99) end)]}' >"$D/in.$b"
    done
    cat "$D"/in.* >"$D/in"
    { for b in $(seq 20); do cat "$D/in.$b"; sleep 0.05; done; } |
        tpar -I "$FIXTURES" -j2 - >"$D/out"
    assert_one_record_per_line "$D/in" "$D/out"
    assert_equal "$(count_status "$D/out" ok)" 2120
    local twice
    twice=$(for f in "$D"/runs.*; do [ "$(wc -l <"$f")" -eq 1 ] || echo "$f"; done)
    [ -z "$twice" ] || fail "ran more than once: $twice"
    assert_attempts_exact "$D/out"
}

@test "stealing from a worker whose running job then kills it: exact attempts, one record each" {
    {
        jobs_n 20 schedjobs:counted "[\"$D\", .]"
        jq -nc --arg d "$D" '{id: 500, fn: "schedjobs:die_once", args: [$d, 500, 0.3]}'
        jq -nc --arg d "$D" 'range(21; 29) | {id: ., fn: "schedjobs:counted", args: [$d, ., 0.1]}'
    } >"$D/in"
    run -0 --separate-stderr tpar -I "$FIXTURES" -j2 --retries 1 "$D/in"
    printf '%s\n' "$output" >"$D/out"
    assert_one_record_per_line "$D/in" "$D/out"
    assert_equal "$(count_status "$D/out" ok)" 29
    assert_equal "$(runs_of 500)" 2
    assert_attempts_exact "$D/out"
}

# Input for the cancel tests: 300 instant jobs (the pipelines grow 256 deep),
# then 60 naps of 0.2 s logged to $D/slow, the FAIL_AT-th of which fails.
# A nap's length is the time tpar has to take a worker's queue back before
# the worker starts its next job: with 0.05 s the "at most -j start"
# checks failed whenever load delayed tpar's reaction by 50 ms.
deep_input() {
    jobs_n 300 operator:truth "[.]"
    jq -nc --arg log "$D/slow" --argjson f "${1:-0}" 'range(1; 61) |
        {id: (1000 + .), fn: (if . == $f then "schedjobs:nap_fail" else "schedjobs:nap" end),
         args: [$log, (1000 + .), 0.2]}'
}

# after_mark LOG MARK: lines of LOG after the first line MARK.
after_mark() {
    awk -v m="$2" 'seen {n++} $0 == m {seen = 1} END {print n + 0}' "$1"
}

# assert_cancelled_never_ran OUT: each cancelled job is absent from the
# slow log, each ok one present.
assert_cancelled_never_ran() {
    local id bad=""
    for id in $(jq -r 'select(.status == "cancelled") | .id' "$1"); do
        grep -q "^$id " "$D/slow" && bad+="$id cancelled but ran; "
    done
    for id in $(jq -r 'select(.status == "ok" and .id >= 1000) | .id' "$1"); do
        grep -q "^$id " "$D/slow" || bad+="$id ok but never ran; "
    done
    [ -z "$bad" ] || fail "$bad"
}

@test "--halt soon: the queued jobs are taken back and cancelled; at most -j start after the failure" {
    deep_input 1 >"$D/in"
    run --separate-stderr tpar -I "$FIXTURES" -j2 --halt soon,fail=1 "$D/in"
    printf '%s\n' "$output" >"$D/out"
    assert_one_record_per_line "$D/in" "$D/out"
    # Exit status: the jobs not ok (the failure and the cancelled ones).
    assert_equal "$status" "$(jq -s '[.[] | select(.status != "ok")] | length' "$D/out")"
    local after
    after=$(after_mark "$D/slow" FAIL)
    [ "$after" -le 2 ] || fail "$after jobs started after the failure"
    [ "$(count_status "$D/out" cancelled)" -ge 40 ] ||
        fail "only $(count_status "$D/out" cancelled) cancelled"
    assert_cancelled_never_ran "$D/out"
    run -0 jq -r 'select(.status == "cancelled") | .error.message' "$D/out"
    assert_line --index 0 "job cancelled before it started"
}

@test "first SIGINT or SIGTERM: the queued jobs are taken back and cancelled; at most -j start after it" {
    local sig code
    for sig in INT TERM; do
        rm -f "$D/slow" "$D"/runs.*
        deep_input >"$D/in"
        start_tpar "$D/in" "$D/out" "$D/err" -I "$FIXTURES" -j2
        while [ "$(wc -l <"$D/slow" 2>/dev/null || echo 0)" -lt 6 ]; do sleep 0.01; done
        echo SIGNAL >>"$D/slow"
        kill -$sig "$TPAR_PID"
        wait_tpar
        code=130; [ $sig = TERM ] && code=143
        assert_equal "$TPAR_STATUS" $code
        assert_one_record_per_line "$D/in" "$D/out"
        local after
        after=$(after_mark "$D/slow" SIGNAL)
        [ "$after" -le 2 ] || fail "SIG$sig: $after jobs started after the signal"
        [ "$(count_status "$D/out" cancelled)" -ge 40 ] ||
            fail "SIG$sig: only $(count_status "$D/out" cancelled) cancelled"
        assert_cancelled_never_ran "$D/out"
    done
}

@test "stealing: a worker whose RESULTs all came before its GIVEBACK is not sent jobs until the GIVEBACK; the run goes on" {
    # The stand-in worker (fixtures/fake_worker.py) reads a TAKEBACK only
    # between jobs and answers it 2 s later, so the worker whose queue was
    # stolen has no job in flight while its TAKEBACK is still unanswered.
    # A job that arrives then must go elsewhere: tpar spun forever in its
    # dispatch loop, choosing that worker and sending it nothing.
    printf '#!/bin/sh\nexec "%s" "%s/fake_worker.py" "$@"\n' "$(real_python)" "$FIXTURES" >"$D/fake"
    chmod +x "$D/fake"
    mkfifo "$D/in.fifo"
    {
        jobs_n 50 operator:add '[1, 2]'
        sleep 0.3 # both workers idle; then three jobs queue on one of them
        printf '%s\n' '{"id":"b","fn":"time:sleep","args":[0.1]}' \
            '{"id":"long","fn":"time:sleep","args":[0.5]}' \
            '{"id":"behind","fn":"time:sleep","args":[0]}'
        sleep 1.1 # their results are in, the GIVEBACK is not
        printf '%s\n' '{"id":"late","fn":"time:sleep","args":[0]}'
    } >"$D/in.fifo" &
    FAKE_GIVEBACK_DELAY=2 TPAR_WORKER="$D/fake" run -0 --separate-stderr \
        timeout -s KILL 30 "$TPAR" -j2 <"$D/in.fifo"
    wait
    assert_equal "$(jq -s 'length' <<<"$output")" 54
    assert_equal "$(jq -s '[.[] | select(.status == "ok")] | length' <<<"$output")" 54
    assert_equal "$(jq -r 'select(.id == "late") | .status' <<<"$output")" ok
}
