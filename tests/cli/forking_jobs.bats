#!/usr/bin/env bats
# Jobs that fork (os.fork, multiprocessing's fork): their children do not
# hold the worker's pipes.

load test_helper

setup() {
    D="$BATS_TEST_TMPDIR"
}

teardown() {
    [ -s "$D/child" ] && kill "$(cat "$D/child")" 2>/dev/null || true
}

@test "forking jobs: a worker's death is reported at once, though a child of its job lives on" {
    {
        job jobs:fork_sleeper '[30]'
        job jobs:exit3
        job operator:add '[1,2]'
    } >"$D/in"
    # Into files: the child holds the worker's stderr, which `run` would
    # wait on.
    SECONDS=0
    TPAR_TEST_TIMEOUT=20 tpar -j1 -I "$FIXTURES" "$D/in" >"$D/out" 2>"$D/err" || true
    local took=$SECONDS
    jq -r 'select(.seq == 1) | .value' "$D/out" >"$D/child"
    kill -0 "$(cat "$D/child")" || fail "the job's child is gone already"
    run -0 jq -s -c 'sort_by(.seq) | map(.status)' "$D/out"
    assert_output '["ok","broken","ok"]'
    [ "$took" -lt 10 ] || fail "tpar took $took s: it waited for the job's child"
}
