#!/usr/bin/env bats
# Where records go and what they say: an output that is also an input, the
# summary's total beside --resume, records about files with odd names.

load test_helper

setup() {
    D="$BATS_TEST_TMPDIR"
}

@test "outputs: -o or --joblog naming an input file is refused, the input kept" {
    job operator:add '[1,2]' >"$D/in"
    cp "$D/in" "$D/orig"
    run -255 --separate-stderr tpar -o "$D/in" "$D/in"
    assert_equal "$stderr" "tpar: -o $D/in is also an input file"
    run -255 --separate-stderr tpar --joblog "$D/in" - "$D/in" </dev/null
    assert_equal "$stderr" "tpar: --joblog $D/in is also an input file"
    cmp "$D/in" "$D/orig"
    ln "$D/in" "$D/link"  # the same file under another name
    run -255 tpar -o "$D/link" "$D/in"
    cmp "$D/in" "$D/orig"
}

@test "outputs: the summary's total counts the result records, not the jobs --resume skipped" {
    {
        job operator:add '[1,2]' '' '"a"'
        job operator:add '[3,4]' '' '"b"'
        job operator:add '[5,6]' '' '"c"'
    } >"$D/in"
    printf '%s\n' '{"type":"result","id":"a","status":"ok","value":3}' \
        '{"type":"result","id":"b","status":"ok","value":7}' >"$D/done"
    run -0 tpar --resume "$D/done" --summary "$D/in"
    run -0 jq -s -c 'map(select(.type == "summary") | [.total, .ok, .skipped])[0],
                     (map(select(.type == "result")) | length)' <<<"$output"
    assert_output $'[1,1,2]\n1'
}

@test "outputs: a file name that is not UTF-8 still gives valid JSON records" {
    local f
    f="$D/bad$(printf '\xff')name.jsonl"
    printf 'notjson\n' >"$f"
    tpar "$f" >"$D/out" || true
    # Strict: the bytes must be UTF-8 (jq would mend them silently).
    "$(real_python)" -c 'import json, sys; [json.loads(l) for l in open(sys.argv[1], encoding="utf-8")]' "$D/out"
    run -0 jq -r '.file, .error.message' "$D/out"
    assert_line --index 0 "$D/bad"$'\uFFFD'"name.jsonl"
    assert_line --index 1 --partial "$D/bad"$'\uFFFD'"name.jsonl, line 1"
}
