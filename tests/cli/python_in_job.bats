#!/usr/bin/env bats
# Python inside a CLI job (issue 14): sys.executable is a real Python, so
# subprocess.run([sys.executable, ...]) and multiprocessing's spawn and
# forkserver pools work in a job, with the base Python and in a venv.

load test_helper

setup() {
    D="$BATS_TEST_TMPDIR"
    cat >"$D/inner.py" <<'PY'
import multiprocessing as mp
import subprocess
import sys

def exe():
    return sys.executable

def sub():
    r = subprocess.run([sys.executable, "-c", "import sys; print(6 * 7, sys.prefix)"],
                       capture_output=True, text=True, check=True)
    return r.stdout.split()

def square(x):
    return x * x

def pool(method):
    with mp.get_context(method).Pool(2) as p:
        return p.map(square, [1, 2, 3])
PY
}

@test "python in a job: sys.executable runs Python, not tpar-worker" {
    run -0 tpar run -I "$D" inner:exe
    local exe
    exe=$(jq -r .value <<<"$output")
    [[ $(basename "$exe") == python* ]] || fail "sys.executable is $exe"
    run -0 "$exe" -c 'print("ok")'
    run -0 tpar run -I "$D" inner:sub
    run -0 jq -c '.value[0]' <<<"$output"
    assert_output '"42"'
}

@test "python in a job: multiprocessing spawn and forkserver pools work" {
    run -0 tpar -k -I "$D" < <(printf '%s\n' '{"fn":"inner:pool","args":["spawn"]}' '{"fn":"inner:pool","args":["forkserver"]}')
    run -0 jq -c -s 'map(.value)' <<<"$output"
    assert_output '[[1,4,9],[1,4,9]]'
}

@test "python in a job: in an active venv, sys.executable is the venv's python" {
    local venv="$D/venv"
    "$(real_python)" -m venv --without-pip "$venv"
    VIRTUAL_ENV="$venv" run -0 tpar run -I "$D" inner:exe
    run -0 jq -r .value <<<"$output"
    assert_equal "$(dirname "$output")" "$venv/bin"
    VIRTUAL_ENV="$venv" run -0 tpar run -I "$D" inner:sub
    run -0 jq -r '.value[1]' <<<"$output"
    assert_equal "$(realpath "$output")" "$(realpath "$venv")"
    VIRTUAL_ENV="$venv" run -0 tpar map -k -I "$D" inner:pool ::: '"spawn"'
    run -0 jq -c .value <<<"$output"
    assert_output '[1,4,9]'
}
