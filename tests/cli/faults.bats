#!/usr/bin/env bats
# Defects found under faults and hostile input (issue 12): what a job
# names, what the worker puts on sys.path, integers of any size.

load test_helper

# value_text: the raw JSON text of "value" in $output (jq would round big ints).
value_text() {
    printf '%s\n' "$output" | sed -n 's/.*"value": *\([^,}]*\).*/\1/p'
}

@test "faults: a job loaded by file path does not shadow the real module for later jobs" {
    mkdir -p "$BATS_TEST_TMPDIR/shadow"
    printf 'def f():\n    return "mine"\n' >"$BATS_TEST_TMPDIR/shadow/json.py"
    cd "$BATS_TEST_TMPDIR"
    # One worker: both jobs land on it, the file's first.
    printf '%s\n' '{"id":1,"fn":"shadow/json.py:f"}' \
        '{"id":2,"fn":"json:dumps","args":[[1,2]]}' \
        '{"id":3,"fn":"shadow/json.py:f"}' >in.jsonl
    run -0 tpar -j1 -k in.jsonl
    run -0 jq -c '[.id, .status, .value]' <<<"$output"
    assert_output "$(printf '%s\n' '[1,"ok","mine"]' '[2,"ok","[1, 2]"]' '[3,"ok","mine"]')"
}

@test "faults: two files with one name are two modules; a class's type name is its file's stem" {
    mkdir -p "$BATS_TEST_TMPDIR/a" "$BATS_TEST_TMPDIR/b"
    printf 'class Oops(Exception): pass\ndef f():\n    raise Oops("a")\n' >"$BATS_TEST_TMPDIR/a/m.py"
    printf 'def f():\n    return "b"\n' >"$BATS_TEST_TMPDIR/b/m.py"
    cd "$BATS_TEST_TMPDIR"
    printf '%s\n' '{"id":1,"fn":"a/m.py:f"}' '{"id":2,"fn":"b/m.py:f"}' >in.jsonl
    run -1 --separate-stderr tpar -j1 -k in.jsonl
    run -0 jq -c '[.id, .status, .value // .error.type]' <<<"$output"
    assert_output "$(printf '%s\n' '[1,"error","m.Oops"]' '[2,"ok","b"]')"
}

@test "faults: a file module's functions pickle by reference inside the worker" {
    printf 'import pickle\ndef g():\n    return 5\ndef f():\n    return pickle.loads(pickle.dumps(g))()\n' \
        >"$BATS_TEST_TMPDIR/pk.py"
    run -0 tpar run "$BATS_TEST_TMPDIR/pk.py:f"
    run -0 jq -c '[.status, .value]' <<<"$output"
    assert_output '["ok",5]'
}

@test "faults: a path that is not a .py file says so" {
    run -1 tpar run /etc/passwd:x
    run -0 jq -r '.error.type + ": " + .error.message' <<<"$output"
    assert_output "ImportError: cannot load '/etc/passwd' as a module: a job's module file must end in .py"
}

@test "faults: builtins that read their caller's frame work as jobs" {
    run -0 tpar run builtins:eval --args '["6 * 7"]'
    assert_equal "$(value_text)" 42
    run -0 tpar run builtins:exec --args '["x = 1"]'
    run -0 jq -c '.value' <<<"$output"
    assert_output null
    # eval sees fresh globals, not the worker's own
    run -1 tpar run builtins:eval --args '["FILE_MODULE_MARK"]'
    run -0 jq -r '.error.type' <<<"$output"
    assert_output NameError
}

@test "faults: the current directory is first on sys.path, unless PYTHONSAFEPATH is set" {
    printf 'def where():\n    return "cwd"\n' >"$BATS_TEST_TMPDIR/cwdmod.py"
    cd "$BATS_TEST_TMPDIR"
    run -0 tpar run cwdmod:where
    run -0 jq -r '.value' <<<"$output"
    assert_output cwd
    PYTHONSAFEPATH=1 run -1 tpar run cwdmod:where
    run -0 jq -r '.error.type' <<<"$output"
    assert_output ModuleNotFoundError
    # -I still puts a directory there
    PYTHONSAFEPATH=1 run -0 tpar run -I . cwdmod:where
}

@test "faults: integers over 4,300 digits travel exact, both ways" {
    run -0 tpar run math:factorial --args '[2000]'
    [ "${#output}" -gt 5000 ] || fail "short: ${output:0:200}"
    local want
    want=$("$(real_python)" -c 'import math, sys; sys.set_int_max_str_digits(0); print(math.factorial(2000))')
    assert_equal "$(value_text)" "$want"
    local big
    big=$(printf '7%.0s' $(seq 6000))
    run -0 tpar run operator:neg --args "[$big]"
    assert_equal "$(value_text)" "-$big"
    # as a dict key too
    run -0 tpar run builtins:dict --kwargs "{}" --args "[[[$big, 1]]]"
    run -0 jq -r '.value | keys[0] | length' <<<"$output"
    assert_output 6000
}

@test "faults: a job's own code keeps CPython's digit limit, as under python3" {
    local big
    big=$(printf '7%.0s' $(seq 6000))
    run -1 tpar run builtins:str --args "[$big]"
    run -0 jq -r '.error.type' <<<"$output"
    assert_output ValueError
}

# --- worker deaths before READY (#1), what jobs start outlives nothing (#2)

@test "faults: a worker SIGKILLed before READY is replaced, and every job runs (spawn, forkserver)" {
    export FAULTS_DIR=$BATS_TEST_TMPDIR
    local wt
    for wt in spawn forkserver; do
        rm -f "$FAULTS_DIR/died"
        jobs_n 20 operator:neg '[.]' >"$BATS_TEST_TMPDIR/in.jsonl"
        run -0 --separate-stderr tpar -j 2 --worker-type "$wt" -I "$FIXTURES" \
            --init faults:die_once "$BATS_TEST_TMPDIR/in.jsonl"
        [ -e "$FAULTS_DIR/died" ] || fail "no worker died ($wt)"
        printf '%s\n' "$output" >"$BATS_TEST_TMPDIR/out.jsonl"
        assert_one_record_per_line "$BATS_TEST_TMPDIR/in.jsonl" "$BATS_TEST_TMPDIR/out.jsonl"
        assert_equal "$(count_status "$BATS_TEST_TMPDIR/out.jsonl" ok)" 20
        assert_equal "$(jq -s '[.[].attempts] | max' "$BATS_TEST_TMPDIR/out.jsonl")" 1
    done
}

@test "faults: workers that keep dying before READY end the run, each job one record" {
    export FAULTS_DIR=$BATS_TEST_TMPDIR
    jobs_n 3 operator:neg '[.]' >"$BATS_TEST_TMPDIR/in.jsonl"
    run -255 --separate-stderr tpar -j 2 -I "$FIXTURES" --init faults:die_always \
        "$BATS_TEST_TMPDIR/in.jsonl"
    assert_regex "$stderr" 'workers keep dying before they start: [0-9]+ in a row, the last worker [0-9]+ killed by signal 9'
    printf '%s\n' "$output" >"$BATS_TEST_TMPDIR/out.jsonl"
    assert_one_record_per_line "$BATS_TEST_TMPDIR/in.jsonl" "$BATS_TEST_TMPDIR/out.jsonl"
    assert_equal "$(count_status "$BATS_TEST_TMPDIR/out.jsonl" cancelled)" 3
}

@test "faults: an --init that raises still ends the run at once (exit 70 is the user's)" {
    run -255 --separate-stderr tpar run -I "$FIXTURES" --init faults:no_such_init operator:neg --args '[1]'
    assert_regex "$stderr" 'failed to start: exited with code 70'
}

# children FILE...: each file holds a pid; none of them may run any more.
assert_sleepers_gone() {
    local f pids=()
    for f in "$@"; do
        [ -s "$f" ] || fail "no pid in $f"
        pids+=("$(cat "$f")")
    done
    assert_pids_gone "${pids[@]}"
}

@test "faults: what a job started dies when its worker ends, however it ends (spawn, forkserver)" {
    export FAULTS_DIR=$BATS_TEST_TMPDIR
    local wt
    for wt in spawn forkserver; do
        printf '%s\n' \
            "{\"id\":1,\"fn\":\"faults:sleeper\",\"args\":[\"$wt-retired\"]}" \
            "{\"id\":2,\"fn\":\"faults:sleeper\",\"args\":[\"$wt-killed\",\"kill\"]}" \
            "{\"id\":3,\"fn\":\"faults:sleeper\",\"args\":[\"$wt-exited\",\"exit\"]}" \
            >"$BATS_TEST_TMPDIR/in.jsonl"
        # one job per worker: the first retires after its job, exit 0
        run -2 --separate-stderr tpar -j 1 -k --worker-type "$wt" --max-tasks-per-worker 1 -I "$FIXTURES" \
            "$BATS_TEST_TMPDIR/in.jsonl"
        run -0 jq -c '[.id, .status]' <<<"$output"
        assert_output "$(printf '%s\n' '[1,"ok"]' '[2,"broken"]' '[3,"broken"]')"
        assert_sleepers_gone "$FAULTS_DIR/$wt-retired" "$FAULTS_DIR/$wt-killed" "$FAULTS_DIR/$wt-exited"
    done
}

@test "faults: what a job started dies when an idle worker exits at the end of the run" {
    export FAULTS_DIR=$BATS_TEST_TMPDIR
    run -0 tpar run -I "$FIXTURES" faults:sleeper --args '["run"]'
    assert_sleepers_gone "$FAULTS_DIR/run"
}

# --- output that nobody reads (#3), memory bounded by bytes (#4) -----------

@test "faults: a job's timeout fires on time while nobody reads the output" {
    cd "$BATS_TEST_TMPDIR"
    mkfifo out.fifo
    # The reader opens the output at once but reads only after 8 s.
    ( exec 3<out.fifo; sleep 8; cat <&3 >out.jsonl ) &
    local reader=$! st
    # The slow job first, alone on its worker; then 1.2 MB of records from
    # the other worker (20 ms jobs: none queues behind the slow one) fill
    # the pipe while it runs.
    { printf '%s\n' '{"id":"slow","fn":"time:sleep","args":[30],"timeout":1}'
      sleep 0.3
      "$(real_python)" -c '
import json
for i in range(60):
    print(json.dumps({"id": i, "fn": "faults:text", "args": [20000, 20]}))'
    } | timeout -k 5 60 "$TPAR" -j 2 -I "$FIXTURES" >out.fifo || st=$?
    wait $reader
    assert_equal "${st:-0}" 1 # one job failed: the slow one
    assert_jsonl out.jsonl
    assert_equal "$(count_status out.jsonl ok)" 60
    local dur
    dur=$(jq -r 'select(.id == "slow") | "\(.status) \(.duration)"' out.jsonl)
    # Before: the loop sat in write() until the reader woke (~8 s).
    [[ $dur =~ ^timeout\ [1-3]\. ]] || fail "the 1 s timeout took: $dur"
}

@test "faults: SIGTERM is handled while nobody reads the output" {
    cd "$BATS_TEST_TMPDIR"
    mkfifo out.fifo
    ( exec 3<out.fifo; sleep 10; cat <&3 >/dev/null ) &
    local reader=$!
    "$(real_python)" -c '
import json
for i in range(200):
    print(json.dumps({"id": i, "fn": "faults:text", "args": [20000, 20]}))' >in.jsonl
    "$TPAR" -j 2 -I "$FIXTURES" in.jsonl >out.fifo 2>err.txt &
    local tp=$! i
    sleep 2 # the pipe is full by now
    kill -TERM $tp
    for i in $(seq 30); do
        grep -q "terminated" err.txt && break
        sleep 0.1
    done
    grep -q "terminated" err.txt || fail "SIGTERM not handled within 3 s"
    kill $reader 2>/dev/null || true
    kill -KILL $tp 2>/dev/null || true
    wait $tp || true
}

@test "faults: queued jobs are bounded by bytes (--max-buffer): 5 MB jobs behind one busy worker" {
    # ASan keeps freed memory in quarantine (256 MB): RSS says nothing there.
    if ldd "$TPAR" 2>/dev/null | grep -q libasan; then
        skip "tpar built with ASan"
    fi
    cd "$BATS_TEST_TMPDIR"
    "$(real_python)" -c '
import json
print(json.dumps({"id": "busy", "fn": "time:sleep", "args": [3]}))
big = "x" * (5 << 20)
for i in range(40):
    print(json.dumps({"id": i, "fn": "builtins:len", "args": [big]}))' >in.jsonl
    run -0 /usr/bin/time -f 'maxrss %M' -o rss.txt "$TPAR" -j 1 -o out.jsonl in.jsonl
    assert_equal "$(count_status out.jsonl ok)" 41
    local kb
    kb=$(sed -n 's/^maxrss //p' rss.txt)
    # 200 MB of jobs wait; the default bound holds 64 MiB of them.
    [ "$kb" -lt 160000 ] || fail "tpar's peak RSS was $kb kB"
    run -0 /usr/bin/time -f 'maxrss %M' -o rss.txt "$TPAR" -j 1 --max-buffer 8M -o out.jsonl in.jsonl
    kb=$(sed -n 's/^maxrss //p' rss.txt)
    [ "$kb" -lt 80000 ] || fail "tpar's peak RSS with --max-buffer 8M was $kb kB"
}

@test "faults: --max-buffer takes a size" {
    run -255 --separate-stderr tpar --max-buffer 0 /dev/null
    assert_regex "$stderr" 'max-buffer'
    run -255 --separate-stderr tpar --max-buffer lots /dev/null
}

# --- smaller (#10) -------------------------------------------------------

@test "faults: a write error on the output is reported once" {
    run -255 --separate-stderr tpar -o /dev/full <(jobs_n 2000 operator:neg '[.]')
    local n
    n=$(grep -c 'cannot write' <<<"$stderr")
    [ "$n" -eq 1 ] || fail "reported $n times: $stderr"
    run -255 --separate-stderr tpar --joblog /dev/full <(jobs_n 2000 operator:neg '[.]')
    n=$(grep -c 'cannot write' <<<"$stderr")
    [ "$n" -eq 1 ] || fail "reported $n times: $stderr"
}

@test "faults: a timeout written with many digits is a number like any other" {
    local t
    t="0.$(printf '0%.0s' $(seq 70))5e72"
    printf '{"id":1,"fn":"operator:neg","args":[1],"timeout":%s}\n' "$t" >"$BATS_TEST_TMPDIR/in.jsonl"
    run -0 tpar "$BATS_TEST_TMPDIR/in.jsonl"
    run -0 jq -r '.status' <<<"$output"
    assert_output ok
}
