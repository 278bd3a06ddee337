#!/usr/bin/env bats
# Mistakes must not pass silently (issue 14): --resume's checks,
# --resume-failed, unknown job keys, --preload failures, the end-of-run
# error summary, trimmed tracebacks.

load test_helper

setup() {
    D="$BATS_TEST_TMPDIR"
}

# four jobs: a and c ok, b an error, d ok
four_jobs() {
    {
        job jobs:ident '["a"]' '' '"a"'
        job jobs:fail '[]' '' '"b"'
        job jobs:ident '["c"]' '' '"c"'
        job jobs:ident '["d"]' '' '"d"'
    } >"$D/in"
}

@test "--resume refuses a joblog, the job input, and a file of other lines" {
    four_jobs
    run -1 tpar -I "$FIXTURES" --joblog "$D/log" -o "$D/out" "$D/in"
    run -255 --separate-stderr tpar -I "$FIXTURES" --resume "$D/log" "$D/in"
    assert_regex "$stderr" "is a joblog"
    # GNU parallel's habit: --resume as a flag beside --joblog.
    run -255 --separate-stderr tpar -I "$FIXTURES" --joblog "$D/log2" --resume "$D/in"
    assert_regex "$stderr" "holds job lines, not result records"
    [ ! -e "$D/log2" ] || [ ! -s "$D/log2" ] || fail "it ran jobs"
    printf 'hello\nworld\n' >"$D/text"
    usage_error -I "$FIXTURES" --resume "$D/text" "$D/in"
    usage_error -I "$FIXTURES" --resume "$D/nonexistent" "$D/in"
    usage_error -I "$FIXTURES" --resume "$D/out" --joblog "$D/out" "$D/in"
    usage_error --resume "$D/out" --resume-failed "$D/out" "$D/in"
}

@test "--resume skips jobs that ran to their end, failed ones too; --resume-failed reruns those" {
    four_jobs
    run -1 tpar -I "$FIXTURES" -o "$D/out" "$D/in"
    # A killed run's output: c's record is missing, d was cancelled.
    jq -c 'select(.id != "c") | if .id == "d" then .status = "cancelled" else . end' "$D/out" >"$D/cut"
    run -0 tpar -I "$FIXTURES" --resume "$D/cut" --summary -o "$D/r1" "$D/in"
    run -0 jq -s -r 'map(select(.type == "result") | .id) | sort | join(" ")' "$D/r1"
    assert_output 'c d'
    run -1 tpar -I "$FIXTURES" --resume-failed "$D/cut" -o "$D/r2" "$D/in"
    run -0 jq -s -r 'map(select(.type == "result") | .id) | sort | join(" ")' "$D/r2"
    assert_output 'b c d'
}

@test "--resume R -o R: the file ends with exactly one final record per id" {
    four_jobs
    # First run of a resumable job: R does not exist yet.
    run -1 tpar -I "$FIXTURES" --resume-failed "$D/R" -o "$D/R" --summary "$D/in"
    # b keeps failing: rerun twice more; a partial line from a killed run too.
    printf '{"type":"result","id":"x' >>"$D/R"
    run -1 tpar -I "$FIXTURES" --resume-failed "$D/R" -o "$D/R" --summary "$D/in"
    run -1 tpar -I "$FIXTURES" --resume-failed "$D/R" -o "$D/R" "$D/in"
    assert_jsonl "$D/R"
    run -0 jq -s -r 'map(select(.type == "result") | "\(.id)=\(.status)") | sort | join(" ")' "$D/R"
    assert_output 'a=ok b=error c=ok d=ok'
    run -0 jq -s 'map(select(.type == "summary")) | length' "$D/R"
    assert_output 0
    # With --resume (failed jobs count as done) nothing runs again.
    run -0 tpar -I "$FIXTURES" --resume "$D/R" -o "$D/R" "$D/in"
    run -0 jq -s -r 'map("\(.id)=\(.status)") | sort | join(" ")' "$D/R"
    assert_output 'a=ok b=error c=ok d=ok'
}

@test "tracebacks hold the job's frames, not tpar's or importlib's" {
    run -1 tpar run nosuchmod_xyz:f
    run -0 jq -r '.error.traceback' <<<"$output"
    assert_output "ModuleNotFoundError: No module named 'nosuchmod_xyz'"
    # An error raised while the user's module is imported keeps its frame.
    printf 'import os\nraise RuntimeError("at import")\n' >"$D/badimport.py"
    run -1 tpar run badimport:f -I "$D"
    run -0 jq -r '.error.traceback' <<<"$output"
    assert_line --partial "badimport.py\", line 2, in <module>"
    refute_output --partial '_tpar_worker'
    refute_output --partial 'importlib'
    run -1 tpar run jobs:fail -I "$FIXTURES"
    run -0 jq -r '.error.traceback' <<<"$output"
    assert_line --index 0 'Traceback (most recent call last):'
    assert_output --partial 'jobs.py'
    refute_output --partial '_tpar_worker'
}

@test "end of run: stderr lists the distinct errors with counts, most frequent first" {
    {
        jobs_n 300 nosuchmod_xyz:f '[]'
        job jobs:fail '["once"]'
        printf 'not json\n'
        job jobs:ident '[1]'
    } >"$D/in"
    run -101 --separate-stderr tpar -I "$FIXTURES" -o "$D/out" "$D/in"
    assert_equal "${#stderr_lines[@]}" 4
    assert_equal "${stderr_lines[0]}" "tpar: 302 of 303 job(s) failed:"
    assert_regex "${stderr_lines[1]}" "^tpar: +300  error ModuleNotFoundError: No module named 'nosuchmod_xyz'\$"
    assert_regex "$stderr" "tpar: +1  error ValueError: once"
    assert_regex "$stderr" "tpar: +1  bad_input BadInput: invalid JSON"
    # -q: nothing; no failure: nothing.
    run -101 --separate-stderr tpar -q -I "$FIXTURES" -o "$D/out" "$D/in"
    assert_equal "$stderr" ""
    run -0 --separate-stderr tpar map math:sqrt ::: 1 4
    assert_equal "$stderr" ""
}

@test "end of run: past 10 kinds of error the rest are counted on one line" {
    seq 1 15 | jq -c '{fn: "jobs:fail", args: ["kind \(.)"]}' >"$D/in"
    run -15 --separate-stderr tpar -I "$FIXTURES" -o "$D/out" "$D/in"
    assert_equal "${#stderr_lines[@]}" 12
    assert_regex "${stderr_lines[11]}" '^tpar: +5  \(5 other kinds of error\)$'
}

@test "job lines: an unknown key (a misspelt kwargs) is bad input, not a run with default arguments" {
    printf '%s\n' '{"id":"k","fn":"jobs:echo","args":[1],"kwrags":{"b":2}}' >"$D/in"
    run -1 --separate-stderr tpar -I "$FIXTURES" "$D/in"
    run -0 jq -r '[.status, .error.message] | join(" | ")' <<<"$output"
    assert_output --regexp '^bad_input \| .*line 1: unknown key "kwrags" \(a job line has fn, args, kwargs, id, timeout, and meta'
    [ ! -e "$D/ran" ]
}

@test "job lines: meta carries the user's own JSON untouched into the record" {
    printf '%s\n' '{"id":1,"fn":"operator:add","args":[1,2],"meta":{"row":7,"big":123456789012345678901234567890,"f":1.50}}' \
        '{"id":2,"fn":"jobs:fail","meta":"x","args":[]}' >"$D/in"
    run -1 --separate-stderr tpar -k -I "$FIXTURES" "$D/in"
    assert_line --index 0 --partial '"meta":{"row":7,"big":123456789012345678901234567890,"f":1.50}'
    assert_line --index 1 --partial '"meta":"x"'
    run -0 jq -c -s 'map([.id, .status])' <<<"$output"
    assert_output '[[1,"ok"],[2,"error"]]'
}

@test "--dry-run: every line validated, what would run shown, no worker started" {
    printf '%s\n' '{"id":"a","fn":"operator:add","args":[1,2],"timeout":1.5,"meta":{"m":1}}' \
        '{"fn":"math:sqrt","kwrags":{}}' '{"fn":"jobs:ident","kwargs":{"x":1}}' >"$D/in"
    # A worker that cannot start would make any real run exit 255.
    TPAR_WORKER=/nonexistent/tpar-worker run -1 --separate-stderr tpar --dry-run -k --prestart 2 "$D/in"
    assert_line --index 0 '{"type":"dry_run","id":"a","meta":{"m":1},"seq":1,"fn":"operator:add","args":[1,2],"kwargs":{},"timeout":1.5}'
    run -0 jq -c -s 'map([.type, .status // .fn])' <<<"$output"
    assert_output '[["dry_run","operator:add"],["result","bad_input"],["dry_run","jobs:ident"]]'
    TPAR_WORKER=/nonexistent/tpar-worker run -0 tpar map --dry-run --raw builtins:len ::: a bc
    run -0 jq -c -s 'map(.args)' <<<"$output"
    assert_output '[["a"],["bc"]]'
    TPAR_WORKER=/nonexistent/tpar-worker run -0 tpar run --dry-run math:factorial 5
    assert_output '{"type":"dry_run","id":1,"seq":1,"fn":"math:factorial","args":[5],"kwargs":{}}'
}

@test "joblog: a failed attempt names its error type, and its worker's exit code or signal" {
    printf '%s\n' '{"id":"k","fn":"jobs:sigkill"}' '{"id":"f","fn":"jobs:fail"}' \
        '{"id":"x","fn":"jobs:exit3"}' '{"id":"t","fn":"time:sleep","args":[5],"timeout":0.2}' \
        '{"id":"o","fn":"operator:add","args":[1,2]}' >"$D/in"
    run -4 --separate-stderr tpar -I "$FIXTURES" -j1 --joblog "$D/log" -o "$D/out" "$D/in"
    run -0 jq -c -s 'sort_by(.id) | map([.id, .status, .error, .exit, .signal, (.worker | type)])' "$D/log"
    assert_output '[["f","error","ValueError",null,null,"number"],["k","broken","BrokenWorkerError",null,9,"number"],["o","ok",null,null,null,"number"],["t","timeout","TimeoutError",null,9,"number"],["x","broken","BrokenWorkerError",3,null,"number"]]'
    # The records say it too.
    run -0 jq -c -s 'sort_by(.id) | map(select(.status == "broken") | [.id, .error.exit, .error.signal])' "$D/out"
    assert_output '[["k",null,9],["x",3,null]]'
}

@test "--preload: a module that fails to import fails the run as a failing --init does" {
    run -255 --separate-stderr tpar --worker-type forkserver --preload json,nosuchmod_xyz \
        < <(job operator:add '[1, 2]')
    run -0 jq -r .status <<<"$output"
    assert_output cancelled
    assert_regex "$stderr" "--preload nosuchmod_xyz failed"
    assert_regex "$stderr" "ModuleNotFoundError: No module named 'nosuchmod_xyz'"
    assert_regex "$stderr" "forkserver ended before it forked a worker"
    # The same run with modules that import is fine.
    run -0 tpar --worker-type forkserver --preload json,math < <(job operator:add '[1, 2]')
    run -0 jq -r .value <<<"$output"
    assert_output 3
}
