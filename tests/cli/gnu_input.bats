#!/usr/bin/env bats
# Input as xargs and GNU parallel users write it (issue 14): -j forms,
# positional arguments to run, ::: and ::::, --raw and -0.

load test_helper

setup() {
    D="$BATS_TEST_TMPDIR"
}

# max_workers N JARGS...: the workers a run of N jobs started, when each
# job waits until all N are running (so N workers are needed).
max_workers() {
    local n=$1
    shift
    jobs_n "$n" jobs:barrier "[\"$D\", \"t\\(.)\", $n]" >"$D/in"
    rm -f "$D"/arrived.*
    run -0 tpar -I "$FIXTURES" "$@" --summary -o "$D/out" "$D/in"
    jq -s -r 'map(select(.type == "summary"))[0].workers' "$D/out"
}

@test "-j +N and -N count from the CPUs; +1 is not 1" {
    local n
    n=$(nproc)
    # +1: N+1 jobs that each wait for all N+1 to run at once finish only
    # with N+1 workers.
    assert_equal "$(max_workers $((n + 1)) -j +1)" $((n + 1))
    # -1 (at least 1): never more than max(n-1, 1) workers.
    jobs_n 6 jobs:pidlog "[\"$D\"]" >"$D/in2"
    run -0 tpar -I "$FIXTURES" -j -1 -o "$D/out2" "$D/in2"
    local lim=$((n - 1 < 1 ? 1 : n - 1))
    [ "$(worker_pids "$D/out2" | wc -l)" -le "$lim" ] || fail "more than $lim workers at -j -1"
    run -0 tpar -I "$FIXTURES" -j -100 -o "$D/out2" "$D/in2"
    assert_equal "$(worker_pids "$D/out2" | wc -l)" 1
}

@test "-j 0 runs as many jobs at once as are waiting" {
    assert_equal "$(max_workers 6 -j 0)" 6
}

@test "-j: malformed forms are usage errors" {
    usage_error -j ''
    usage_error -j +
    usage_error -j ++1
    usage_error -j +x
    usage_error -j +1%
    usage_error -j 1.5
    usage_error -j 5000
    usage_error -j 2x
}

@test "run: positional arguments are the call's arguments, as JSON" {
    run -0 tpar run math:factorial 20
    run -0 jq -r '.value' <<<"$output"
    assert_output 2432902008176640000
    run -0 tpar run jobs:echo -I "$FIXTURES" 1 '"two"' '[3]' --kwargs '{"k": null}'
    run -0 jq -c '.value' <<<"$output"
    assert_output '{"args":[1,"two",[3]],"kwargs":{"k":null}}'
}

@test "run: --raw passes positional arguments as strings; non-JSON without it is a usage error" {
    run -0 tpar run --raw jobs:echo -I "$FIXTURES" 20 a.txt -- -x
    run -0 jq -c '.value.args' <<<"$output"
    assert_output '["20","a.txt","-x"]'
    run -255 --separate-stderr tpar run os.path:getsize README.md
    assert_regex "$stderr" "argument 'README.md' is not JSON.*--raw"
    usage_error run operator:add 1 2 --args '[1]'
}

@test "::: values are the arguments of map's function, one job each" {
    run -0 tpar map -k math:factorial ::: 3 4 5
    run -0 jq -s -c 'map(.value)' <<<"$output"
    assert_output '[6,24,120]'
}

@test "::: values that start with - are values, not options" {
    run -0 tpar map -k operator:neg ::: -1 -2 -3.5
    run -0 jq -s -c 'map(.value)' <<<"$output"
    assert_output '[1,2,3.5]'
    run -0 tpar map -k --raw operator:add ::: -j ::: --x
    run -0 jq -s -c 'map(.value)' <<<"$output"
    assert_output '["-j--x"]'
}

@test "several ::: sources: every combination, the last fastest, as the function's arguments" {
    run -0 tpar map -k --raw operator:add ::: a b ::: 1 2 3
    run -0 jq -s -c 'map(.value)' <<<"$output"
    assert_output '["a1","a2","a3","b1","b2","b3"]'
}

@test ":::: FILE: each line is a value; with ::: they combine" {
    printf '1\n\n2\n' >"$D/nums"
    printf 'x\ny\n' >"$D/words"
    run -0 tpar map -k operator:mul :::: "$D/nums" ::: 3
    run -0 jq -s -c 'map(.value)' <<<"$output"
    assert_output '[3,6]'
    run -0 tpar map -k --raw operator:add :::: "$D/words" "$D/words"
    run -0 jq -s -c 'map(.value)' <<<"$output"
    assert_output '["xx","xy","yx","yy"]'
}

@test "::: mistakes are usage errors with one line" {
    usage_error map math:sqrt ::: abc
    usage_error map math:sqrt :::
    usage_error map math:sqrt ::: 1 :::
    usage_error map math:sqrt ::::
    usage_error map math:sqrt :::: /nonexistent/args
    usage_error math:sqrt ::: 1
    usage_error run math:sqrt ::: 1
    usage_error map math:sqrt "$BATS_TEST_FILENAME" ::: 1
    usage_error map --star math:sqrt ::: 1 ::: 2
}

@test "map: a line that is not JSON is bad input whose message names --raw" {
    run -3 --separate-stderr tpar map os.path:getsize < <(printf 'README.md\nx y\n{\n')
    run -0 jq -r -s 'map(.status + " " + (.error.message | test("--raw passes each line as a string") | tostring)) | unique | .[]' <<<"$output"
    assert_output 'bad_input true'
}

@test "map --raw: each line is a string argument, unchanged; only empty lines are skipped" {
    printf 'a b\n%s\n\n  \n"q"\n' "$BATS_TEST_FILENAME" | tpar map -k --raw builtins:repr >"$D/out"
    run -0 jq -c -s 'map(.value)' "$D/out"
    assert_output "[\"'a b'\",\"'$BATS_TEST_FILENAME'\",\"'  '\",\"'\\\"q\\\"'\"]"
    # What the issue's user typed, with --raw.
    cd "$REPO_ROOT"
    run -0 bash -c "ls | '$TPAR' map --raw os.path:getsize | jq -s 'map(.status) | unique'"
    assert_output --partial '"ok"'
    refute_output --partial 'bad_input'
}

@test "map -0: NUL-separated items, newlines inside them kept, implies --raw" {
    printf 'a\nb\0c\0' | tpar map -0 -k builtins:repr >"$D/out"
    run -0 jq -c -s 'map(.value)' "$D/out"
    assert_output "[\"'a\\\\nb'\",\"'c'\"]"
    printf '1\0 2\0' >"$D/args"
    run -0 tpar map -0 -k --raw operator:add :::: "$D/args" ::: x
    run -0 jq -c -s 'map(.value)' <<<"$output"
    assert_output '["1x"," 2x"]'
}

@test "--raw and -0 go with map (and --raw with run)" {
    usage_error --raw
    usage_error -0
    usage_error run -0 math:sqrt 1
    usage_error map --raw --star operator:add
    usage_error map -0 --star operator:add ::: a
}
