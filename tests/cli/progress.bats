#!/usr/bin/env bats
# The progress line on a terminal (issue 14): it never shares a line with
# a record, and never redraws over a job stream being typed.  Run on a
# pseudo-terminal (fixtures/pty_run.py).

load test_helper

setup() {
    D="$BATS_TEST_TMPDIR"
}

# on_pty ARGS...: pty_run.py's output, decoded to text with the escapes
# made visible: ESC as <E>, CR as <CR>.
on_pty() {
    "$(real_python)" "$FIXTURES/pty_run.py" "$@" 2>"$D/pty.err" |
        "$(real_python)" -c 'import ast, sys
b = ast.literal_eval(sys.stdin.read())
sys.stdout.write(b.decode("utf-8", "replace").replace("\x1b", "<E>").replace("\r", "<CR>"))'
}

@test "progress: with records on the same terminal, no record starts on the progress line" {
    jobs_n 30 time:sleep '[0.04]' >"$D/in"
    run -0 on_pty --input "$D/in" -- "$TPAR" -j2 --progress
    local records progress bad
    records=$(grep -c '{"type":"result"' <<<"$output" || true)
    [ "$records" -eq 30 ] || fail "expected 30 records: $output"
    progress=$(grep -o 'tpar: [0-9]* done' <<<"$output" | wc -l)
    [ "$progress" -ge 3 ] || fail "expected the progress line drawn several times: $output"
    # What the terminal shows of a line is what follows its last carriage
    # return: a record there starts at the first column, after the progress
    # line was taken away (<CR><E>[K), never after progress text.
    bad=$(sed -e 's/.*<CR>//' -e 's/^<E>\[K//' <<<"$output" | grep '.{"type":"result"' || true)
    [ -z "$bad" ] || fail "a record shares a line: $bad"
}

@test "progress: by default off when the records go to the terminal" {
    jobs_n 10 time:sleep '[0.05]' >"$D/in"
    run -0 on_pty --input "$D/in" -- "$TPAR" -j2
    [ "$(grep -c '{"type":"result"' <<<"$output")" -eq 10 ] || fail "$output"
    refute_output --partial 'tpar: '
}

@test "progress: never redrawn while the job stream is typed at the terminal" {
    printf '%s\n' '{"fn":"operator:add","args":[1,2]}' >"$D/typed"
    run -0 on_pty --typed --delay 1.2 --input "$D/typed" -- "$TPAR" --progress -o "$D/out"
    # Nothing of tpar's on the terminal during the 1.2 s of typing (the
    # terminal echoes the typed line itself)...
    local quiet before
    quiet=$(sed -n 's/^quiet-until //p' "$D/pty.err")
    before=${output:0:$quiet}
    [[ $before != *'tpar:'* ]] || fail "a progress line was drawn over the typing: $before"
    # ...and the final line once the stream has ended.
    assert_output --partial 'tpar: 1 done, 0 failed'
    run -0 jq -c .value "$D/out"
    assert_output 3
}
