#!/usr/bin/env bats
# `tpar run MOD:FN`: one call in one worker (issue 2).

load test_helper

# value_text: the raw JSON text of "value" in $output (jq would round big ints).
value_text() {
    printf '%s\n' "$output" | sed -n 's/.*"value": *\([^,}]*\).*/\1/p'
}

@test "run: operator:add --args [1,2] prints one ok record with value 3" {
    run -0 tpar run operator:add --args '[1,2]'
    assert_equal "${#lines[@]}" 1
    run -0 jq -e -c '[.type, .status, .value]' <<<"$output"
    assert_output '["result","ok",3]'
}

@test "run: math:factorial 20 is the integer 2432902008176640000" {
    run -0 tpar run math:factorial --args '[20]'
    assert_equal "$(value_text)" 2432902008176640000
}

@test "run: integers beyond 64 bits come out exact" {
    run -0 tpar run jobs:big -I "$FIXTURES"
    assert_equal "$(value_text)" 1267650600228229401496703205376
    run -0 tpar run jobs:neg_big -I "$FIXTURES"
    assert_equal "$(value_text)" -2503155504993241601315571986085849
}

@test "run: a big integer argument reaches the job exact" {
    run -0 tpar run jobs:add -I "$FIXTURES" --args '[123456789012345678901234567890, 1]'
    assert_equal "$(value_text)" 123456789012345678901234567891
}

@test "run: --kwargs passes keyword arguments" {
    run -0 tpar run jobs:echo -I "$FIXTURES" --args '[1]' --kwargs '{"b": [2, "x"], "c": null}'
    run -0 jq -c '.value' <<<"$output"
    assert_output '{"args":[1],"kwargs":{"b":[2,"x"],"c":null}}'
}

@test "run: --kwargs alone" {
    run -0 tpar run operator:add --kwargs '{}' --args '[2, 5]'
    run -0 jq -c '.value' <<<"$output"
    assert_output 7
    run -0 tpar run jobs:echo -I "$FIXTURES" --kwargs '{"a": 1}'
    run -0 jq -c '.value' <<<"$output"
    assert_output '{"args":[],"kwargs":{"a":1}}'
}

@test "run: strings, floats, lists, dicts, null and booleans round-trip" {
    local v='{"s":"é\n\"q\"","f":1.5,"l":[1,[2,3]],"d":{"k":true},"n":null,"b":false}'
    run -0 tpar run jobs:ident -I "$FIXTURES" --args "[$v]"
    run -0 jq -c '.value == ($v | fromjson)' --arg v "$v" <<<"$output"
    assert_output true
}

@test "run: a module in the current directory" {
    cp "$FIXTURES/jobs.py" "$BATS_TEST_TMPDIR/cwdmod.py"
    cd "$BATS_TEST_TMPDIR"
    run -0 tpar run cwdmod:add --args '[40, 2]'
    run -0 jq -c '.value' <<<"$output"
    assert_output 42
}

@test "run: -I DIR and --path DIR put DIR on sys.path" {
    mkdir -p "$BATS_TEST_TMPDIR/lib"
    printf 'def hello(name):\n    return "hello " + name\n' >"$BATS_TEST_TMPDIR/lib/greet.py"
    cd "$FIXTURES"
    run -0 tpar run greet:hello -I "$BATS_TEST_TMPDIR/lib" --args '["a"]'
    run -0 jq -r '.value' <<<"$output"
    assert_output "hello a"
    run -0 tpar run --path "$BATS_TEST_TMPDIR/lib" greet:hello --args '["b"]'
    run -0 jq -r '.value' <<<"$output"
    assert_output "hello b"
}

@test "run: a file path ./jobs.py:fn and an absolute path" {
    cd "$FIXTURES"
    run -0 tpar run ./jobs.py:add --args '[1, 2]'
    run -0 jq -c '.value' <<<"$output"
    assert_output 3
    cd "$BATS_TEST_TMPDIR"
    run -0 tpar run "$FIXTURES/jobs.py:add" --args '[3, 4]'
    run -0 jq -c '.value' <<<"$output"
    assert_output 7
}

@test "run: a dotted function name Class.method" {
    run -0 tpar run jobs:Calc.double -I "$FIXTURES" --args '[21]'
    run -0 jq -c '.value' <<<"$output"
    assert_output 42
}

# -- tpar's own errors: exit 255, one line on stderr, nothing on stdout -------

usage_error() {
    run -255 --separate-stderr tpar "$@"
    assert_equal "$output" ""
    [ "${#stderr_lines[@]}" -eq 1 ] ||
        fail "expected one line on stderr, got ${#stderr_lines[@]}: $stderr"
    [ -n "${stderr_lines[0]}" ] || fail "empty error message"
}

@test "run usage: no MOD:FN" {
    usage_error run
}

@test "run usage: MOD:FN without a colon" {
    usage_error run operator.add --args '[1,2]'
    assert_regex "$stderr" 'operator\.add'
}

@test "run usage: an empty module or function name" {
    usage_error run :add
    usage_error run operator:
}

@test "run usage: --args that is not a JSON array" {
    usage_error run operator:add --args '{"a": 1}'
    assert_regex "$stderr" '(array|--args)'
    usage_error run operator:add --args '3'
}

@test "run usage: --kwargs that is not a JSON object" {
    usage_error run operator:add --kwargs '[1, 2]'
    assert_regex "$stderr" '(object|--kwargs)'
}

@test "run usage: invalid JSON says where" {
    usage_error run operator:add --args '[1, 2'
    assert_regex "$stderr" '[0-9]'
    usage_error run operator:add --args '[1,, 2]'
    assert_regex "$stderr" '[0-9]'
    usage_error run operator:add --kwargs '{"a" 1}'
    assert_regex "$stderr" '[0-9]'
}

@test "run usage: --args without a value, an unknown option, an extra argument" {
    usage_error run operator:add --args
    usage_error run operator:add --bogus
    usage_error run operator:add extra
}

# -- failures inside the job: exit 1, an error record -------------------------

# error_record TYPE_REGEX ARGS...: runs tpar, expects exit 1 and one error
# record whose error.type matches.
error_record() {
    local type=$1 TAB=$'\t'
    shift
    run -1 --separate-stderr tpar "$@"
    assert_equal "${#lines[@]}" 1
    run -0 jq -e -r '[.type, .status, .error.type, (.error.message | type),
                      (.error | has("traceback"))] | @tsv' <<<"$output"
    assert_regex "$output" "^result${TAB}error${TAB}$type${TAB}string${TAB}true\$"
}

@test "run error: a module that does not exist" {
    error_record '(ModuleNotFoundError|ImportError)' run no_such_module_xyz:fn
}

@test "run error: a module that raises while imported" {
    error_record 'RuntimeError' run badmod:fn -I "$FIXTURES"
}

@test "run error: a missing attribute" {
    error_record 'AttributeError' run operator:no_such_function
}

@test "run error: an exception in the function, with its traceback" {
    error_record 'ValueError' run jobs:fail -I "$FIXTURES" --args '["kaput"]'
    run -1 tpar run jobs:fail -I "$FIXTURES" --args '["kaput"]'
    run -0 jq -r '.error.message, .error.traceback' <<<"$output"
    assert_line --index 0 --partial kaput
    assert_output --partial 'in fail'
}

@test "run error: wrong arguments are a TypeError result" {
    error_record 'TypeError' run operator:add --args '[1]'
}

@test "run error: a set cannot be carried by JSON, and says so" {
    error_record 'TypeError' run jobs:a_set -I "$FIXTURES"
    run -1 tpar run jobs:a_set -I "$FIXTURES"
    run -0 jq -r '.error.message' <<<"$output"
    assert_output --partial set
}

@test "run error: NaN is not JSON" {
    run -1 tpar run jobs:nan -I "$FIXTURES"
    run -0 jq -r '.status' <<<"$output"
    assert_output error
}

# -- a job that kills its worker: broken, named, reaped ------------------------

# broken_record WHAT FN: runs FN (which notes its pid), expects a broken
# record naming WHAT and the pid, and the worker gone.
broken_record() {
    local what=$1 fn=$2 pidfile="$BATS_TEST_TMPDIR/pid"
    run -1 --separate-stderr tpar run "$fn" -I "$FIXTURES" --args "[\"$pidfile\"]"
    assert_equal "${#lines[@]}" 1
    local pid
    pid=$(cat "$pidfile")
    run -0 jq -r '.type, .status, .error.type, .error.message' <<<"$output"
    assert_line --index 0 result
    assert_line --index 1 broken
    assert_line --index 2 BrokenWorkerError
    assert_line --index 3 --regexp "$what"
    assert_line --index 3 --regexp "(^|[^0-9])$pid([^0-9]|\$)"
    assert_pids_gone "$pid"
}

@test "run broken: a segfault names SIGSEGV and the pid" {
    broken_record '(SIGSEGV|signal 11)' jobs:segv
}

@test "run broken: os._exit(3) names exit code 3 and the pid" {
    broken_record 'code 3' jobs:exit3
}

@test "run broken: SIGKILL names SIGKILL and the pid" {
    broken_record '(SIGKILL|signal 9)' jobs:sigkill
}

@test "run broken: SIGKILL from outside" {
    local d="$BATS_TEST_TMPDIR"
    printf 'unused\n' >"$d/in"
    start_tpar "$d/in" "$d/out" "$d/err" run jobs:block -I "$FIXTURES" --args "[\"$d\", \"a\"]"
    wait_files "$d" started.a 1
    local pid
    pid=$(cat "$d/started.a")
    kill -KILL "$pid"
    wait_tpar
    assert_equal "$TPAR_STATUS" 1
    run -0 jq -r '.status, .error.message' "$d/out"
    assert_line --index 0 broken
    assert_line --index 1 --regexp '(SIGKILL|signal 9)'
    assert_line --index 1 --partial "$pid"
    assert_pids_gone "$pid"
}

# -- stdout is for records only -------------------------------------------------

@test "run: print() in a job goes to stderr, never to stdout" {
    run -0 --separate-stderr tpar run jobs:noisy -I "$FIXTURES" --args '["hi"]'
    assert_equal "${#lines[@]}" 1
    run -0 jq -r '.value' <<<"$output"
    assert_output hi
    assert_regex "$stderr" 'job says hi'
}

# -- the worker sees the user's Python environment ------------------------------

@test "run: an active virtualenv's packages are importable" {
    local py venv="$BATS_TEST_TMPDIR/venv" site
    py=$(real_python)
    "$py" -m venv --without-pip "$venv"
    site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_path("purelib"))')
    mkdir -p "$site/tpar_venv_only_pkg"
    printf 'import sys\ndef where():\n    return sys.prefix\n' \
        >"$site/tpar_venv_only_pkg/__init__.py"
    # The base Python lacks it...
    unset VIRTUAL_ENV
    run -1 tpar run tpar_venv_only_pkg:where
    run -0 jq -r '.error.type' <<<"$output"
    assert_output --regexp '(ModuleNotFoundError|ImportError)'
    # ...the virtualenv has it.
    export VIRTUAL_ENV="$venv"
    run -0 tpar run tpar_venv_only_pkg:where
    run -0 jq -r '.value' <<<"$output"
    assert_equal "$(realpath "$output")" "$(realpath "$venv")"
}

@test "run: JSON arguments are parsed without importing json.decoder and re" {
    # In a venv, whose start-up (no .pth files) imports neither itself.
    local py venv="$BATS_TEST_TMPDIR/venv"
    py=$(real_python)
    "$py" -m venv --without-pip "$venv"
    export VIRTUAL_ENV="$venv"
    run -0 tpar -j1 -I "$FIXTURES" <<'JOBS'
{"fn":"builtins:repr","args":[{"a":[1,2.5,"\u00e9",null,true],"b":1e400}]}
{"fn":"light:loaded","args":["re","json","json.decoder","_json"]}
JOBS
    run -0 jq -c -s 'sort_by(.id) | map(.value)' <<<"$output"
    assert_output "[\"{'a': [1, 2.5, 'é', None, True], 'b': inf}\",[\"_json\"]]"
}

@test "run error: a huge message and traceback are cut to 1 MiB characters each" {
    run -1 tpar run jobs:fail_big -I "$FIXTURES" --args '[3000000]'
    run -0 jq -c '.error | [.type, (.message | length), (.message | endswith("x... (1951424 more characters)")), (.traceback | length < 1048700)]' <<<"$output"
    assert_output '["ValueError",1048605,true,true]'
}

@test "run error: a value over the 1 GiB frame limit is an error record, not a broken worker" {
    run -1 tpar run operator:mul --args '["a", 1100000000]'
    run -0 jq -c '[.status, .error.type, (.error.message | test("1100000002 bytes of JSON, over the 1073741824-byte frame limit"))]' <<<"$output"
    assert_output '["error","OverflowError",true]'
}
