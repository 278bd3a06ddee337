#!/usr/bin/env bats
# A job's output and cost in its record (issue 14): --capture, --tag,
# --stats.

load test_helper

setup() {
    D="$BATS_TEST_TMPDIR"
    cat >"$D/talk.py" <<'PY'
import os, sys, time

def talk(tag, n=1):
    for i in range(n):
        print(f"{tag} out {i}")
        print(f"{tag} err {i}", file=sys.stderr)
    os.write(1, f"{tag} fd1\n".encode())   # below Python's buffers
    return tag

def burn(seconds):
    t = time.process_time() + seconds
    while time.process_time() < t:
        pass

def meet(d, tag, n):
    """Prints, waits until n jobs have printed (so they run at once), prints."""
    print(f"{tag} before", flush=True)
    open(os.path.join(d, "met." + tag), "w").close()
    t = time.monotonic() + 20
    while len([f for f in os.listdir(d) if f.startswith("met.")]) < n and time.monotonic() < t:
        time.sleep(0.01)
    print(f"{tag} after", flush=True)
    return tag

def grow(mb):
    b = bytearray(mb << 20)
    b[::4096] = b"x" * len(b[::4096])   # touch every page
    return len(b)
PY
}

@test "--capture: each job's stdout and stderr in its own record, nothing on tpar's stderr" {
    printf '%s\n' '{"id":"a","fn":"talk:talk","args":["A",2]}' '{"id":"b","fn":"talk:talk","args":["B"]}' \
        '{"id":"c","fn":"operator:add","args":[1,2]}' >"$D/in"
    run -0 --separate-stderr tpar -k -j2 --capture -I "$D" "$D/in"
    assert_equal "$stderr" ""
    run -0 jq -c -s 'map([.id, .stdout, .stderr, .output_cut])' <<<"$output"
    assert_output '[["a","A out 0\nA out 1\nA fd1\n","A err 0\nA err 1\n",false],["b","B out 0\nB fd1\n","B err 0\n",false],["c","","",false]]'
}

@test "--capture: jobs running at once in forkserver workers each get only their own output" {
    printf '%s\n' "{\"fn\":\"talk:meet\",\"args\":[\"$D\",\"A\",2]}" \
        "{\"fn\":\"talk:meet\",\"args\":[\"$D\",\"B\",2]}" >"$D/in"
    run -0 --separate-stderr tpar -k -j2 --capture --stats --worker-type forkserver -I "$D" "$D/in"
    run -0 jq -c -s 'map([.value, .stdout, .max_rss > 0])' <<<"$output"
    assert_output '[["A","A before\nA after\n",true],["B","B before\nB after\n",true]]'
}

@test "--capture=SIZE: output is cut to SIZE bytes per stream, and the record says so" {
    run -0 --separate-stderr tpar run --capture=10 -I "$D" talk:talk '"X"' 5
    run -0 jq -c '[.value, (.stdout | length), (.stderr | length), .output_cut]' <<<"$output"
    assert_output '["X",10,10,true]'
    # Without --capture the output goes to stderr as always.
    run -0 --separate-stderr tpar run -I "$D" talk:talk '"Y"'
    assert_regex "$stderr" 'Y out 0'
    refute_output --partial stdout
}

@test "--tag: a job's output lines on stderr, each prefixed with its id; not in the record" {
    printf '%s\n' '{"id":"first","fn":"talk:talk","args":["A",2]}' '{"id":2,"fn":"talk:talk","args":["B"]}' >"$D/in"
    run -0 --separate-stderr tpar -k -j1 --tag -I "$D" "$D/in"
    refute_output --partial '"stdout"'
    run -0 sort <<<"$stderr"
    assert_output "$(printf '"first"\t%s\n' 'A err 0' 'A err 1' 'A fd1' 'A out 0' 'A out 1' | sort
                     printf '2\t%s\n' 'B err 0' 'B fd1' 'B out 0' | sort)"
}

@test "--stats: CPU seconds (user, system) and the worker's peak RSS while the job ran" {
    # One worker, in this order: the peak of each job is measured from its
    # start (the small job's is not the later big one's).
    printf '%s\n' '{"id":"burn","fn":"talk:burn","args":[0.3]}' '{"id":"small","fn":"operator:add","args":[1,2]}' \
        '{"id":"grow","fn":"talk:grow","args":[80]}' >"$D/in"
    run -0 tpar -k -j1 --stats -I "$D" "$D/in"
    run -0 jq -c -s 'map([.id, (.cpu_user + .cpu_sys >= 0.29), (.max_rss / 1048576 | floor)])' <<<"$output"
    local burn grow small
    burn=$(jq -c '.[0]' <<<"$output")
    [ "$(jq '.[1]' <<<"$burn")" = true ] || fail "burn used under 0.3 s of CPU: $output"
    small=$(jq '.[1][2]' <<<"$output")
    grow=$(jq '.[2][2]' <<<"$output")
    [ "$grow" -ge 80 ] || fail "grow's peak RSS $grow MB < 80 MB"
    [ "$small" -lt 60 ] || fail "small job's peak $small MB"
    run -0 tpar run operator:add 1 2
    refute_output --partial cpu_user
}
