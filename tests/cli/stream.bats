#!/usr/bin/env bats
# `tpar [FILE...]` and `tpar map`: the JSON-lines job stream (issue 3):
# input, records, output, bad input, scheduling, exit status.

load test_helper

setup() {
    D="$BATS_TEST_TMPDIR"
}

# raw_value ID: the raw JSON text of "value" in the record with that id
# (jq would round big integers).
raw_value() {
    grep -E "\"id\": *$1[,}]" "$D/out" | sed -n 's/.*"value": *\([^,}]*\).*/\1/p'
}

@test "stream: stdin gives one ok record per line with every field" {
    {
        job operator:add '[1,2]'
        job operator:mul '[3,4]'
        job math:factorial '[5]'
    } >"$D/in"
    run -0 --separate-stderr tpar <"$D/in"
    printf '%s\n' "$output" >"$D/out"
    assert_one_record_per_line "$D/in" "$D/out"
    run -0 jq -s -c 'map(.value) | sort' "$D/out"
    assert_output '[3,12,120]'
    run -0 jq -s -c 'map([.type, .status, (.id|type), (.seq|type), (.attempts),
                          (.duration|type), (.worker|type), has("error")] ) | unique' "$D/out"
    assert_output '[["result","ok","number","number",1,"number","number",false]]'
    run -0 jq -s -c 'map(.duration >= 0) | unique' "$D/out"
    assert_output '[true]'
    assert_equal "$stderr" ""
    # tpar reaped its workers before it exited.
    assert_pids_gone $(worker_pids "$D/out")
}

@test "stream: the id defaults to the sequence number, an explicit id of any scalar is kept" {
    {
        job jobs:ident '[1]'
        job jobs:ident '[2]' '' '"alpha"'
        job jobs:ident '[3]' '' 42
        job jobs:ident '[4]' '' 2.5
        job jobs:ident '[5]' '' true
        job jobs:ident '[6]'
    } >"$D/in"
    run -0 tpar -I "$FIXTURES" -o "$D/out" "$D/in"
    assert_one_record_per_line "$D/in" "$D/out"
    run -0 jq -s -c 'sort_by(.value) | map(.id)' "$D/out"
    local ids=$output
    run -0 jq -s -c 'sort_by(.value) | map(.seq)' "$D/out"
    local seqs=$output
    run -0 jq -c --argjson ids "$ids" --argjson seqs "$seqs" -n \
        '[$ids[1:5], ($ids[0] == $seqs[0]), ($ids[5] == $seqs[5]), ($seqs | unique | length)]'
    assert_output '[["alpha",42,2.5,true],true,true,6]'
}

@test "stream: FILE arguments and - for stdin are read in order" {
    job operator:add '[1,1]' >"$D/a"
    job operator:add '[2,2]' >>"$D/a"
    job operator:add '[3,3]' >"$D/b"
    job operator:add '[4,4]' >"$D/c"
    run -0 tpar -o "$D/out" "$D/a" - "$D/c" <"$D/b"
    cat "$D/a" "$D/b" "$D/c" >"$D/all"
    assert_one_record_per_line "$D/all" "$D/out"
    run -0 jq -s -c 'map(.value) | sort' "$D/out"
    assert_output '[2,4,6,8]'
}

@test "stream: pipe FILEs in a row are each read in turn" {
    job operator:add '[1,1]' >"$D/a"
    job operator:add '[2,2]' >>"$D/a"
    job operator:add '[3,3]' >"$D/b"
    job operator:add '[4,4]' >"$D/c"
    # stdin (a pipe), then two pipes, a regular file and a pipe whose last
    # line has no newline.
    run -0 tpar -o "$D/out" - <(cat "$D/b") <(cat "$D/c") "$D/a" \
        <(printf '%s' '{"fn":"operator:add","args":[5,5]}') < <(cat "$D/a")
    run -0 jq -s -c 'map(.value) | sort' "$D/out"
    assert_output '[2,2,4,4,6,8,10]'
    # Only pipes.
    run -0 tpar -k -o "$D/out" <(cat "$D/a") <(cat "$D/b") <(cat "$D/c")
    run -0 jq -s -c 'map(.value)' "$D/out"
    assert_output '[2,4,6,8]'
}

@test "stream: - - on a pipe reads stdin, then its end" {
    job operator:add '[1,1]' >"$D/a"
    job operator:add '[2,2]' >>"$D/a"
    run -0 tpar -k -o "$D/out" - - < <(cat "$D/a")
    assert_one_record_per_line "$D/a" "$D/out"
    run -0 jq -s -c 'map(.value)' "$D/out"
    assert_output '[2,4]'
    run -0 tpar -k -o "$D/out" - "$D/a" - < <(cat "$D/a")
    run -0 jq -s -c 'map(.value)' "$D/out"
    assert_output '[2,4,2,4]'
}

@test "stream: kwargs and args reach the function" {
    job jobs:echo '[1,"two"]' '{"k":[3]}' >"$D/in"
    job jobs:echo '[]' '{"a":{"b":null}}' >>"$D/in"
    job jobs:echo '[true]' >>"$D/in"
    run -0 tpar -I "$FIXTURES" -k <"$D/in"
    run -0 jq -s -c 'map(.value)' <<<"$output"
    assert_output '[{"args":[1,"two"],"kwargs":{"k":[3]}},{"args":[],"kwargs":{"a":{"b":null}}},{"args":[true],"kwargs":{}}]'
}

@test "stream: big integers stay exact in both directions" {
    {
        job jobs:big '[]' '' 1
        job math:factorial '[20]' '' 2
        # Written by hand: jq would round the big integer.
        echo '{"id": 3, "fn": "jobs:add", "args": [123456789012345678901234567890, 1]}'
    } >"$D/in"
    run -0 tpar -I "$FIXTURES" -o "$D/out" "$D/in"
    assert_equal "$(raw_value 1)" 1267650600228229401496703205376
    assert_equal "$(raw_value 2)" 2432902008176640000
    assert_equal "$(raw_value 3)" 123456789012345678901234567891
}

@test "stream: -o FILE and --output FILE write the records there, not to stdout" {
    job operator:add '[1,2]' >"$D/in"
    run -0 tpar -o "$D/out" "$D/in"
    assert_output ""
    run -0 jq -c .value "$D/out"
    assert_output 3
    run -0 tpar --output "$D/out2" <"$D/in"
    assert_output ""
    run -0 jq -c .value "$D/out2"
    assert_output 3
}

@test "stream: -I DIR and --path DIR find modules; a module in the current directory is found" {
    mkdir "$D/lib"
    printf 'def f(x):\n    return x + 100\n' >"$D/lib/libmod.py"
    job libmod:f '[1]' >"$D/in"
    run -0 tpar -I "$D/lib" "$D/in"
    assert_equal "$(jq -c .value <<<"$output")" 101
    run -0 tpar --path "$D/lib" "$D/in"
    assert_equal "$(jq -c .value <<<"$output")" 101
    cd "$D/lib"
    run -0 tpar "$D/in"
    assert_equal "$(jq -c .value <<<"$output")" 101
    job ./libmod.py:f '[2]' >"$D/in2"
    run -0 tpar "$D/in2"
    assert_equal "$(jq -c .value <<<"$output")" 102
}

@test "stream: print() in jobs goes to stderr and never into the records" {
    jobs_n 20 jobs:noisy "[.]" >"$D/in"
    run -0 --separate-stderr tpar -I "$FIXTURES" -j2 <"$D/in"
    printf '%s\n' "$output" >"$D/out"
    assert_one_record_per_line "$D/in" "$D/out"
    assert_regex "$stderr" 'job says 20'
}

@test "stream: a job cannot read tpar's input (its stdin is not tpar's)" {
    # A job that read its stdin would steal job lines from the stream.
    job jobs:stdin_name '[]' >"$D/in"
    job jobs:slurp_stdin '[]' >>"$D/in"
    jobs_n 3 jobs:ident "[.]" >>"$D/in"
    run -0 tpar -I "$FIXTURES" -j1 -k -o "$D/out" <"$D/in"
    assert_one_record_per_line "$D/in" "$D/out"
    run -0 jq -r 'select(.seq == 1) | .value' "$D/out"
    refute_output "$D/in"
    run -0 jq -r 'select(.seq == 2) | .value' "$D/out"
    assert_output 0
}

@test "stream: records never interleave, even when large and from many workers" {
    jobs_n 40 jobs:text '[200000]' >"$D/in"
    run -0 tpar -I "$FIXTURES" -j4 -o "$D/out" "$D/in"
    assert_one_record_per_line "$D/in" "$D/out"
    run -0 jq -s -c 'map(.value | length) | unique' "$D/out"
    assert_output '[200000]'
}

@test "stream: every line of a long stream gives exactly one record" {
    seq 1 3000 | jq -c '{fn: "operator:add", args: [., 1]}' >"$D/in"
    run -0 tpar -j2 -o "$D/out" "$D/in"
    assert_one_record_per_line "$D/in" "$D/out"
    run -0 jq -s 'map(.value) | add' "$D/out"
    assert_output $((3000 * 3001 / 2 + 3000))
    assert_pids_gone $(worker_pids "$D/out")
}

# -- bad input --------------------------------------------------------------

# bad_line_number RECORD: the line number a bad_input record names: its
# "line" field, else the first number in its message.
bad_line_number() {
    jq -r '.line // (.error.message | capture("(?<n>[0-9]+)").n)' <<<"$1"
}

@test "stream: bad lines among good ones give bad_input records with their line number; the rest runs" {
    {
        job operator:add '[1,1]'            # 1
        echo '{"fn": "operator:add", "args": [1,'   # 2: not JSON
        echo '[1, 2]'                       # 3: not an object
        echo '{"args": [1, 2]}'             # 4: no fn
        echo '{"fn": 3}'                    # 5: fn not a string
        echo '{"fn": "operator:add", "args": {"a": 1}}'   # 6: args not an array
        echo '{"fn": "operator:add", "args": [1], "kwargs": [2]}'  # 7: kwargs not an object
        echo '{"fn": "operator:add", "args": [1, 2], "timeout": "soon"}'  # 8: timeout not a number
        echo '"just a string"'              # 9
        echo '{"fn": "nocolon", "args": []}'   # 10: fn is not MOD:FN
        echo '{"id": {"a": 1}, "fn": "operator:add", "args": [1, 2]}'  # 11: id not a scalar
        job operator:add '[2,2]'            # 12
    } >"$D/in"
    run -10 tpar -o "$D/out" "$D/in"
    assert_one_record_per_line "$D/in" "$D/out"
    assert_equal "$(count_status "$D/out" ok)" 2
    assert_equal "$(count_status "$D/out" bad_input)" 10
    local rec n expect=2
    while IFS= read -r rec; do
        n=$(bad_line_number "$rec")
        assert_equal "$n" "$expect"
        run -0 jq -r '.error.message | length > 0' <<<"$rec"
        assert_output true
        expect=$((expect + 1))
    done < <(jq -c 'select(.status == "bad_input")' "$D/out" | jq -s -c 'sort_by(.seq) | .[]')
    assert_equal "$expect" 12
}

@test "stream: the parse error of a bad line says what is wrong" {
    printf '%s\n' '{"fn": "operator:add", "args": [1,' >"$D/in"
    run -1 --separate-stderr tpar <"$D/in"
    run -0 jq -r '.status, .error.message' <<<"$output"
    assert_line --index 0 bad_input
    assert_line --index 1 --regexp '(JSON|json|parse|expect|end of input)'
}

@test "stream: empty lines are skipped" {
    {
        echo
        job operator:add '[1,1]'
        echo
        echo
        job operator:add '[2,2]'
        echo
    } >"$D/in"
    run -0 tpar -o "$D/out" "$D/in"
    assert_one_record_per_line "$D/in" "$D/out"
    assert_equal "$(count_status "$D/out" ok)" 2
    # seq counts jobs, not lines.
    run -0 jq -s -c 'map(.seq) | sort' "$D/out"
    assert_output '[1,2]'
}

@test "stream: bad_input names the line number within its own file" {
    printf '\n{"fn":"operator:add","args":[1,2]}\n\n\nbad\n' >"$D/a"
    printf 'bad2\n' >"$D/b"
    run -2 tpar -k -o "$D/out" "$D/a" "$D/b"
    run -0 jq -s -c 'map(select(.status == "bad_input") | [.seq, .line])' "$D/out"
    assert_output '[[2,5],[3,1]]'
}

@test "stream: a line longer than --max-line is bad_input, not a crash; the rest runs" {
    local long
    long=$(head -c 5000 /dev/zero | tr '\0' a)
    {
        job jobs:ident '[1]'
        job jobs:ident "[\"$long\"]"
        job jobs:ident '[3]'
    } >"$D/in"
    run -1 tpar -I "$FIXTURES" --max-line 1000 -o "$D/out" "$D/in"
    assert_one_record_per_line "$D/in" "$D/out"
    run -0 jq -r 'select(.status == "bad_input") | .error.message | length > 0' "$D/out"
    assert_output true
    assert_equal "$(count_status "$D/out" ok)" 2
    # Under the default limit the same line runs.
    run -0 tpar -I "$FIXTURES" -o "$D/out" "$D/in"
    assert_equal "$(count_status "$D/out" ok)" 3
}

@test "stream: multi-MB lines from a pipe come through whole, between short ones" {
    # Each long line reaches tpar in many pipe reads; the newline search
    # goes on from where the last read stopped.
    local big=$((6 * 1024 * 1024))
    # long_job N: a jobs:ident line whose argument is 4/3 N bytes of base64.
    long_job() {
        printf '{"fn":"jobs:ident","args":["'
        head -c "$1" /dev/urandom | base64 -w0
        printf '"]}\n'
    }
    {
        job jobs:ident '[1]'
        long_job $((big * 3 / 4))
        job jobs:ident '[3]'
        long_job $((big * 3 / 4 + 3))
        printf '%s' '{"fn":"jobs:ident","args":[5]}'
    } >"$D/in"
    run -0 tpar -I "$FIXTURES" -k -o "$D/out" < <(cat "$D/in")
    assert_one_record_per_line "$D/in" "$D/out"
    # Each value is the argument of its line, byte for byte.
    jq -c '.value' "$D/out" >"$D/got"
    jq -c '.args[0]' "$D/in" >"$D/want"
    cmp "$D/want" "$D/got" || fail "values differ from the input's arguments"
    run -0 jq -c '.value | if type == "string" then length else . end' "$D/out"
    assert_output "$(printf '%s\n' 1 "$big" 3 $((big + 4)) 5)"
    # The same through --max-line: the long lines are bad_input (their
    # rest skipped over many reads), the short ones run with the right
    # line numbers.
    run -2 tpar -I "$FIXTURES" -k --max-line 1M -o "$D/out" < <(cat "$D/in")
    run -0 jq -c '[.seq, .status, .value, .line]' "$D/out"
    assert_output "$(printf '%s\n' '[1,"ok",1,null]' '[2,"bad_input",null,2]' \
        '[3,"ok",3,null]' '[4,"bad_input",null,4]' '[5,"ok",5,null]')"
}

@test "stream: a last line without a newline still runs" {
    printf '%s' '{"fn": "operator:add", "args": [1, 2]}' >"$D/in"
    run -0 tpar <"$D/in"
    assert_equal "$(jq -c .value <<<"$output")" 3
}

# -- failures are records ---------------------------------------------------------

@test "stream: job failures are error records; the rest of the stream runs" {
    {
        job jobs:fail '["one"]'
        job no_such_module_xyz:f '[]'
        job operator:no_such_fn '[]'
        job jobs:a_set '[]'
        job jobs:ident '[7]'
    } >"$D/in"
    run -4 tpar -I "$FIXTURES" -o "$D/out" "$D/in"
    assert_one_record_per_line "$D/in" "$D/out"
    run -0 jq -s -r 'sort_by(.seq) | .[] | [.status, (.error.type // "-")] | @tsv' "$D/out"
    assert_line --index 0 --regexp '^error.ValueError$'
    assert_line --index 1 --regexp '^error.(ModuleNotFoundError|ImportError)$'
    assert_line --index 2 --regexp '^error.AttributeError$'
    assert_line --index 3 --regexp '^error.TypeError$'
    assert_line --index 4 --regexp '^ok.-$'
    run -0 jq -s -c 'map(select(.status == "error") | .error | has("type") and has("message") and has("traceback")) | unique' "$D/out"
    assert_output '[true]'
}

# -- exit status ------------------------------------------------------------------

@test "exit: 0 when every job is ok" {
    job operator:add '[1,1]' >"$D/in"
    run -0 tpar "$D/in"
}

@test "exit: the number of failed jobs, 1 to 100" {
    jobs_n 3 jobs:fail '[]' >"$D/in"
    job jobs:ident '[0]' >>"$D/in"
    run -3 tpar -I "$FIXTURES" "$D/in"
    jobs_n 100 jobs:fail '[]' >"$D/in100"
    run -100 tpar -I "$FIXTURES" -o "$D/out" "$D/in100"
}

@test "exit: 101 when more than 100 jobs failed" {
    jobs_n 101 jobs:fail '[]' >"$D/in"
    run -101 tpar -I "$FIXTURES" -o "$D/out" "$D/in"
    assert_one_record_per_line "$D/in" "$D/out"
    jobs_n 50 jobs:fail '[]' >>"$D/in"
    run -101 tpar -I "$FIXTURES" -o "$D/out" "$D/in"
}

@test "exit: 255 for usage errors, each with a one-line message" {
    usage_error --bogus
    usage_error -j abc
    usage_error -j
    usage_error --timeout soon
    usage_error --timeout -1
    usage_error --retries -1
    usage_error --retry-on sometimes
    usage_error --halt sometimes
    usage_error --halt now,fail=x
    usage_error --max-tasks-per-worker 0
    usage_error --max-worker-rss lots
    usage_error --max-line 0
    usage_error --idle-timeout x
    usage_error --total x
    usage_error --init nocolon
    usage_error map
    usage_error map nocolon
}

@test "exit: 255 for a size whose unit is not K, M, G or T right after the number" {
    usage_error --max-worker-rss '100 B'
    usage_error --max-worker-rss '100 '
    usage_error --max-worker-rss '1 G'
    usage_error --max-line '64 K'
    usage_error --max-worker-rss 100X
    run -0 tpar --max-worker-rss 100KiB </dev/null
    run -0 tpar --max-worker-rss 2g </dev/null
    run -0 tpar --max-line 64M </dev/null
}

@test "exit: 255 for --idle-timeout 0, which would close each worker before its first job" {
    usage_error --idle-timeout 0
    usage_error --idle-timeout 0ms
    usage_error map math:sqrt --idle-timeout 0
    run -0 --separate-stderr tpar map -j1 --idle-timeout 1ms math:sqrt <<<4
    run -0 jq -r '.value' <<<"$output"
    assert_output 2
}

@test "exit: 255 for an unreadable input file, naming it" {
    run -255 --separate-stderr tpar "$D/does-not-exist.jsonl"
    assert_regex "$stderr" 'does-not-exist\.jsonl'
    [ "${#stderr_lines[@]}" -eq 1 ] || fail "one line expected: $stderr"
}

@test "help: --help is short, exits 0 and points to the man page" {
    run -0 tpar --help
    assert_output --partial 'tpar'
    assert_output --regexp 'man tpar|tpar\(1\)'
    [ "${#lines[@]}" -le 40 ] || fail "--help has ${#lines[@]} lines"
    run -0 tpar -h
    assert_output --regexp 'man tpar|tpar\(1\)'
}

@test "help: --version and -V print the version" {
    run -0 tpar --version
    assert_output --regexp '^tpar [0-9]+\.[0-9]+'
    run -0 tpar -V
    assert_output --regexp '^tpar [0-9]+\.[0-9]+'
}

# -- map ----------------------------------------------------------------------------

@test "map: each line is one JSON value passed as the argument" {
    printf '1\n5\n\n20\n' >"$D/in"
    run -0 tpar map math:factorial -o "$D/out" "$D/in"
    assert_one_record_per_line "$D/in" "$D/out"
    run -0 jq -s -c 'sort_by(.seq) | map(.value)' "$D/out"
    assert_output '[1,120,2432902008176640000]'
    run -0 jq -s -c 'map(.id == .seq) | unique' "$D/out"
    assert_output '[true]'
}

@test "map: any JSON value, read from stdin" {
    printf '%s\n' '"a"' '[1,2]' '{"k": null}' 'null' '3.5' >"$D/in"
    run -0 tpar map jobs:ident -I "$FIXTURES" -k <"$D/in"
    run -0 jq -s -c 'map(.value)' <<<"$output"
    assert_output '["a",[1,2],{"k":null},null,3.5]'
}

@test "map --star: a JSON array is spread as the arguments" {
    printf '[1,2]\n[3,4]\n' >"$D/in"
    run -0 tpar map --star operator:add -k "$D/in"
    run -0 jq -s -c 'map(.value)' <<<"$output"
    assert_output '[3,7]'
}

@test "map: a bad line is bad_input, the rest runs; --star wants an array" {
    printf '1\n{oops\n3\n' >"$D/in"
    run -1 tpar map math:factorial -o "$D/out" "$D/in"
    assert_one_record_per_line "$D/in" "$D/out"
    run -0 jq -s -r 'sort_by(.seq) | map(.status) | join(" ")' "$D/out"
    assert_output 'ok bad_input ok'
    printf '[1,2]\n5\n' >"$D/in"
    run -1 tpar map --star operator:add -o "$D/out" "$D/in"
    run -0 jq -s -r 'sort_by(.seq) | map(.status) | join(" ")' "$D/out"
    assert_output 'ok bad_input'
}

@test "map: a file path function and -I" {
    printf '2\n' >"$D/in"
    run -0 tpar map "$FIXTURES/jobs.py:Calc.double" "$D/in"
    assert_equal "$(jq -c .value <<<"$output")" 4
    run -0 tpar map -I "$FIXTURES" jobs:Calc.double "$D/in"
    assert_equal "$(jq -c .value <<<"$output")" 4
}

# -- scheduling ----------------------------------------------------------------------

@test "-k/--keep-order: records come in input order; without it, as they complete" {
    # Job 1 waits until job 2 has run, so job 2 completes first.
    {
        job jobs:wait_then "[\"$D/second-done\", \"first\"]"
        job jobs:touch_then "[\"$D/second-done\", \"second\"]"
        job jobs:ident '["third"]'
    } >"$D/in"
    run -0 tpar -I "$FIXTURES" -j2 "$D/in"
    run -0 jq -s -r 'map(.value) | join(" ")' <<<"$output"
    assert_regex "$output" 'second.*first'
    rm -f "$D/second-done"
    run -0 tpar -I "$FIXTURES" -j2 -k "$D/in"
    run -0 jq -s -r 'map(.value) | join(" ")' <<<"$output"
    assert_output 'first second third'
    rm -f "$D/second-done"
    run -0 tpar -I "$FIXTURES" -j2 --keep-order "$D/in"
    run -0 jq -s -r 'map(.value) | join(" ")' <<<"$output"
    assert_output 'first second third'
}

@test "-k: a long stream comes out in order" {
    seq 1 2000 | jq -c '{fn: "operator:neg", args: [.]}' >"$D/in"
    run -0 tpar -k -j2 -o "$D/out" "$D/in"
    assert_one_record_per_line "$D/in" "$D/out"
    run -0 jq -s -c '(map(.seq) == (map(.seq) | sort)) and (map(-.value) == [range(1; 2001)])' "$D/out"
    assert_output true
}

@test "-j N runs N jobs at once" {
    jobs_n 3 jobs:barrier "[\"$D\", \"t\\(.)\", 3]" >"$D/in"
    run -0 tpar -I "$FIXTURES" -j3 -o "$D/out" "$D/in"
    assert_equal "$(count_status "$D/out" ok)" 3
    assert_equal "$(worker_pids "$D/out" | wc -l)" 3
}

@test "-j: the default is the number of CPUs, N% is a share of them" {
    local n
    n=$(nproc)
    jobs_n "$n" jobs:barrier "[\"$D\", \"t\\(.)\", $n]" >"$D/in"
    run -0 tpar -I "$FIXTURES" -o "$D/out" "$D/in"
    assert_equal "$(count_status "$D/out" ok)" "$n"
    rm -f "$D"/arrived.*
    run -0 tpar -I "$FIXTURES" -j 100% -o "$D/out" "$D/in"
    assert_equal "$(count_status "$D/out" ok)" "$n"
    # 50%: never more workers than half the CPUs (at least one).
    local half=$(((n + 1) / 2))
    jobs_n 8 jobs:pidlog "[\"$D\"]" >"$D/in2"
    run -0 tpar -I "$FIXTURES" -j 50% -o "$D/out" "$D/in2"
    [ "$(worker_pids "$D/out" | wc -l)" -le "$half" ] || fail "more than $half workers at -j 50%"
}

@test "-j 1: one worker is reused for every job" {
    jobs_n 6 jobs:pid '[]' >"$D/in"
    run -0 tpar -I "$FIXTURES" -j1 -o "$D/out" "$D/in"
    assert_equal "$(worker_pids "$D/out" | wc -l)" 1
    run -0 jq -s -c 'map(.value == .worker) | unique' "$D/out"
    assert_output '[true]'
    assert_pids_gone $(worker_pids "$D/out")
}

# -- summary, progress, quiet ---------------------------------------------------------

@test "--summary: a final summary record with counts by status and the wall time" {
    {
        job jobs:ident '[1]'
        job jobs:ident '[2]'
        job jobs:fail '[]'
        echo 'not json'
    } >"$D/in"
    run -2 tpar -I "$FIXTURES" --summary -o "$D/out" "$D/in"
    assert_jsonl "$D/out"
    run -0 jq -s -c '.[-1].type, ([.[] | select(.type == "summary")] | length)' "$D/out"
    assert_output $'"summary"\n1'
    run -0 jq -c '.[-1]' <(jq -s . "$D/out")
    local s=$output
    # Counts by status (flat or under "counts"), and a wall time in seconds.
    run -0 jq -c '(.counts // .) as $c | [$c.ok, $c.error, $c.bad_input, ($c.timeout // 0),
                  ($c.broken // 0), ($c.cancelled // 0), ((.wall // .wall_time // .elapsed) | type)]' <<<"$s"
    assert_output '[2,1,1,0,0,0,"number"]'
    # Without --summary there is none.
    run -2 tpar -I "$FIXTURES" -o "$D/out" "$D/in"
    run -0 jq -s -c '[.[] | select(.type == "summary")] | length' "$D/out"
    assert_output 0
}

@test "--progress: progress on stderr, records on stdout untouched; off by default without a TTY" {
    jobs_n 30 operator:add "[., 1]" >"$D/in"
    run -0 --separate-stderr tpar "$D/in"
    assert_equal "$stderr" ""
    run -0 --separate-stderr tpar --progress "$D/in"
    [ -n "$stderr" ] || fail "--progress printed nothing on stderr"
    printf '%s\n' "$output" >"$D/out"
    assert_one_record_per_line "$D/in" "$D/out"
}

@test "--progress honours NO_COLOR; --total N is accepted and shown" {
    jobs_n 30 operator:add "[., 1]" >"$D/in"
    run -0 --separate-stderr env NO_COLOR=1 timeout 30 "$TPAR" --progress --total 30 "$D/in"
    [ -n "$stderr" ] || fail "--progress printed nothing"
    if [[ "$stderr" == *$'\e'* ]]; then
        fail "escape sequences on stderr despite NO_COLOR: $(printf '%q' "$stderr" | head -c 300)"
    fi
    assert_regex "$stderr" '30'
}

@test "--progress with a TTY on stderr is on by default" {
    command -v script >/dev/null || skip "script(1) is not installed"
    jobs_n 30 operator:add "[., 1]" >"$D/in"
    # script gives the command a terminal; stdout goes to a file.
    run -0 script -qec "$TPAR -o $D/out $D/in" /dev/null
    [ -n "$output" ] || fail "no progress on a terminal"
    assert_one_record_per_line "$D/in" "$D/out"
    run -0 script -qec "$TPAR -q -o $D/out $D/in" /dev/null
    assert_output ""
}

@test "-q: no progress and no notices on stderr" {
    jobs_n 10 operator:add "[., 1]" >"$D/in"
    run -0 --separate-stderr tpar -q "$D/in"
    assert_equal "$stderr" ""
    assert_equal "${#lines[@]}" 10
    run -0 --separate-stderr tpar --progress -q "$D/in"
    assert_equal "$stderr" ""
}

# -- tpar's own errors beyond usage ------------------------------------------------------

@test "exit: 255 when the output or the joblog cannot be written" {
    job operator:add '[1,2]' >"$D/in"
    run -255 --separate-stderr tpar -o "$D/no/such/dir/out" "$D/in"
    [ "${#stderr_lines[@]}" -eq 1 ] || fail "one line expected: $stderr"
    assert_regex "$stderr" 'no/such/dir/out'
    run -255 --separate-stderr tpar --joblog "$D/no/such/dir/log" "$D/in"
    assert_equal "$output" ""
    assert_regex "$stderr" 'no/such/dir/log'
}

@test "TPAR_WORKER names the worker program; a missing one is tpar's own error" {
    local real
    real=$(cd "$(dirname "$TPAR")/../pyworker" 2>/dev/null && pwd)/tpar-worker
    [ -x "$real" ] || real=$(dirname "$TPAR")/tpar-worker
    printf '#!/bin/sh\necho "$$" >>"%s/used"\nexec "%s" "$@"\n' "$D" "$real" >"$D/wrap"
    chmod +x "$D/wrap"
    job operator:add '[1,2]' >"$D/in"
    TPAR_WORKER="$D/wrap" run -0 tpar "$D/in"
    assert_equal "$(jq -c .value <<<"$output")" 3
    [ -s "$D/used" ] || fail "TPAR_WORKER was not used"
    assert_equal "$(jq -r .worker <<<"$output")" "$(head -1 "$D/used")"
    TPAR_WORKER="$D/missing-worker" run -255 --separate-stderr tpar "$D/in"
    assert_regex "$stderr" 'missing-worker'
}

@test "stream: large values go out and come back whole, several in flight to one worker" {
    # 3 MB and 5 MB strings in, 6 MB and 12 MB strings out: above the lane
    # threshold, so they take the workers' lanes; with -j1 the second
    # large job finds the lane held and goes through the pipe instead.
    "$(real_python)" - "$D/in" <<'PY'
import json, sys
with open(sys.argv[1], "w") as f:
    for i, n in enumerate((3_000_000, 5_000_000, 10, 300_000)):
        s = "".join(chr(97 + (k * 7 + i) % 26) for k in range(1000)) * (n // 1000 + 1)
        f.write(json.dumps({"fn": "operator:mul", "args": [s[:n], 2]}) + "\n")
PY
    run -0 --separate-stderr tpar -j1 "$D/in"
    printf '%s\n' "$output" >"$D/out"
    run -0 "$(real_python)" - "$D/in" "$D/out" <<'PY'
import json, sys
jobs = [json.loads(l) for l in open(sys.argv[1])]
recs = {r["id"]: r for r in map(json.loads, open(sys.argv[2]))}
assert len(recs) == len(jobs), recs.keys()
for i, j in enumerate(jobs, 1):
    assert recs[i]["status"] == "ok", recs[i]
    assert recs[i]["value"] == j["args"][0] * 2, i
print("whole")
PY
    assert_output whole
}
