#!/usr/bin/env bats
# The interpreter the workers serve: --python, TPAR_PYTHON, VIRTUAL_ENV,
# python3 in PATH; embedded through its own libpython, or run inside its
# executable when it has none (TPAR_LIBPYTHON=""); nothing in a binary
# points at the build machine's paths.

load test_helper

PYENV_ROOT=${PYENV_ROOT:-$HOME/.pyenv}

setup() {
    D="$BATS_TEST_TMPDIR"
    unset TPAR_PYTHON VIRTUAL_ENV TPAR_LIBPYTHON
    export XDG_CACHE_HOME="$D/cache"
    cat >"$D/where.py" <<'PY'
import os, sys
def where():
    return {"version": sys.version, "prefix": sys.prefix, "executable": sys.executable,
            "exe": os.readlink("/proc/self/exe"), "env": os.environ.get("TPAR_PYTHON"),
            "libpython": sorted({l.split()[-1] for l in open("/proc/self/maps")
                                 if "/libpython3" in l})}
PY
}

# pyenv_python X.Y: that pyenv version's interpreter, or nothing.
pyenv_python() {
    local p
    for p in "$PYENV_ROOT"/versions/"$1".*/bin/python"$1"; do
        [ -x "$p" ] && { echo "$p"; return; }
    done
}

# other_python X.Y: pyenv's X.Y when this build has a worker core for it
# (scripts/test builds with -Dworker_pythons); a missing one fails the test
# when TPAR_TEST_ALL_PYTHONS is set, else skips it.
other_python() {
    local p
    p=$(pyenv_python "$1")
    if [ -z "$p" ] || ! ls "$BUILD_DIR"/pyworker/_worker.cpython-"${1/./}"-*.so >/dev/null 2>&1; then
        [ -n "${TPAR_TEST_ALL_PYTHONS:-}" ] && fail "no Python $1 or no worker core for it in $BUILD_DIR"
        skip "no Python $1 core in this build (-Dworker_pythons)"
    fi
    echo "$p"
}

# expect_served PY OUTPUT: every record ran under PY: its sys.version,
# sys.prefix and sys.executable as PY itself reports them.
expect_served() {
    local py=$1 out=$2 want got
    want=$("$py" -c 'import json, sys; print(json.dumps([sys.version, sys.prefix, sys.executable], separators=(",", ":")))')
    got=$(jq -c '[.value.version, .value.prefix, .value.executable]' <<<"$out" | sort -u)
    assert_equal "$got" "$want"
    assert_equal "$(jq -r .status <<<"$out" | sort -u)" ok
}

stream() { # three jobs, for two workers
    local i
    for i in 1 2 3; do job where:where '[]' '' "$i"; done
}

@test "--python: the same stream runs under pyenv 3.11, Debian's 3.11 and pyenv 3.12/3.13, each as chosen" {
    local pys=() py
    pys+=("$(real_python)")  # the project venv's
    [ -n "$(pyenv_python 3.11)" ] && pys+=("$(pyenv_python 3.11)")
    [ -x /usr/bin/python3.11 ] && pys+=(/usr/bin/python3.11)
    pys+=("$(other_python 3.12)")
    local p313
    p313=$(pyenv_python 3.13)
    if [ -n "$p313" ] && ls "$BUILD_DIR"/pyworker/_worker.cpython-313-*.so >/dev/null 2>&1; then
        pys+=("$p313")
    fi
    stream >"$D/in"
    for py in "${pys[@]}"; do
        run -0 --separate-stderr tpar -j 2 -I "$D" --python "$py" "$D/in"
        [ "$(wc -l <<<"$output")" -eq 3 ] || fail "three records expected under $py: $output"
        expect_served "$py" "$output"
        # The interpreter's own libpython is the one mapped, when it has one.
        lib=$("$py" -c 'import sysconfig as s, os; p = os.path.join(s.get_config_var("LIBDIR"), s.get_config_var("INSTSONAME")); print(p if os.path.isfile(p) else "")')
        if [ -n "$lib" ]; then
            assert_equal "$(jq -r '.value.libpython | join(" ")' <<<"$output" | sort -u)" "$(realpath "$lib")"
        fi
    done
}

@test "--python: forkserver workers serve the chosen interpreter too" {
    local py
    py=$(other_python 3.12)
    stream >"$D/in"
    run -0 --separate-stderr tpar -j 2 -I "$D" --worker-type forkserver --python "$py" "$D/in"
    expect_served "$py" "$output"
}

@test "TPAR_PYTHON chooses when --python does not; --python wins; workers see the choice" {
    local deb=/usr/bin/python3.11 real
    [ -x "$deb" ] || skip "no Debian python3.11"
    real=$(real_python)
    export TPAR_PYTHON=$deb
    run -0 --separate-stderr tpar run -I "$D" where:where
    expect_served "$deb" "$output"
    assert_equal "$(jq -r .value.env <<<"$output")" "$deb"
    run -0 --separate-stderr tpar run -I "$D" --python "$real" where:where
    expect_served "$real" "$output"
    assert_equal "$(jq -r .value.env <<<"$output")" "$real"
}

@test "an activated venv's python is the default, even of another build than tpar's" {
    local base=/usr/bin/python3.11 venv="$D/venv"
    [ -x "$base" ] || base=$(real_python)
    "$base" -m venv --without-pip "$venv"
    export VIRTUAL_ENV="$venv"
    run -0 --separate-stderr tpar run -I "$D" where:where
    expect_served "$venv/bin/python" "$output"
    assert_equal "$(jq -r .value.prefix <<<"$output")" "$venv"
}

@test "a script in PATH (a pyenv-like shim) is run once to learn the real interpreter" {
    local real
    real=$(real_python)
    mkdir "$D/shims"
    printf '#!/bin/sh\necho x >>"%s/shim-runs"\nexec "%s" "$@"\n' "$D" "$real" >"$D/shims/python3"
    chmod +x "$D/shims/python3"
    stream >"$D/in"
    PATH="$D/shims:$PATH" run -0 --separate-stderr tpar -j 2 -I "$D" "$D/in"
    expect_served "$real" "$output"
    assert_equal "$(jq -r .value.env <<<"$output" | sort -u)" "$real"
    # Once by tpar, not once more per worker.
    assert_equal "$(wc -l <"$D/shim-runs")" 1
}

@test "TPAR_LIBPYTHON=\"\": the worker runs inside the interpreter's executable (a Python with no shared libpython)" {
    local py
    for py in "$(real_python)" /usr/bin/python3.11; do
        [ -x "$py" ] || continue
        stream >"$D/in"
        TPAR_LIBPYTHON= run -0 --separate-stderr tpar -j 2 -I "$D" --python "$py" "$D/in"
        expect_served "$py" "$output"
        # The process is the interpreter itself, and loads no libpython.
        assert_equal "$(jq -r .value.exe <<<"$output" | sort -u)" "$(realpath "$py")"
        if ldd "$py" | grep -q libpython; then continue; fi
        assert_equal "$(jq -r '.value.libpython | length' <<<"$output" | sort -u)" 0
        # Forkserver, and a job's exception, the same.
        job where:nope >"$D/bad"
        TPAR_LIBPYTHON= run -1 --separate-stderr tpar -I "$D" --worker-type forkserver --python "$py" "$D/bad"
        assert_equal "$(jq -r .error.type <<<"$output")" AttributeError
    done
}

@test "--python: a missing interpreter, a non-Python and one with no worker core are usage errors, before any job" {
    job operator:add '[1,2]' >"$D/in"
    run -255 --separate-stderr tpar --python "$D/nope" "$D/in"
    assert_equal "$output" ""
    assert_regex "$stderr" "^tpar: --python: .*nope: no such interpreter$"
    run -255 --separate-stderr tpar --python /bin/true "$D/in"
    assert_regex "$stderr" "/bin/true is not a Python 3 interpreter"
    run -255 --separate-stderr tpar --python "" "$D/in"
    # A Python that answers like a real one, of an ABI nothing was built for.
    cat >"$D/py399" <<'SH'
#!/bin/bash
printf 'tpar-probe-1\0/opt/py399/bin/python3\0003.99.0\0.cpython-399-x86_64-linux-gnu.so\0\0/opt/py399/site\0/opt/py399/site\0/opt/py399\0'
SH
    chmod +x "$D/py399"
    run -255 --separate-stderr tpar --python "$D/py399" "$D/in"
    assert_equal "$output" ""
    assert_regex "$stderr" "no tpar worker core for Python 3.99.0 .*_worker.cpython-399-x86_64-linux-gnu.so"
    TPAR_PYTHON="$D/nope" run -255 --separate-stderr tpar "$D/in"
    assert_regex "$stderr" "^tpar: TPAR_PYTHON: "
}

@test "--python: an interpreter that never answers the probe is an error after TPAR_PROBE_TIMEOUT, and leaves nothing running" {
    job operator:add '[1,2]' >"$D/in"
    cat >"$D/hangs" <<SH
#!/bin/bash
sleep 1000 &
echo \$! >"$D/pid"
wait
SH
    chmod +x "$D/hangs"
    TPAR_PROBE_TIMEOUT=1 run -255 --separate-stderr tpar --python "$D/hangs" "$D/in"
    assert_equal "$output" ""
    assert_regex "$stderr" "hangs did not answer tpar's sysconfig probe in 1 s"
    local pid
    pid=$(cat "$D/pid")
    sleep 0.2
    # Killed: gone, or a zombie that PID 1 has not reaped yet (in a
    # container it may never do it).
    if kill -0 "$pid" 2>/dev/null && [ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" != Z ]; then
        kill "$pid"
        fail "the probe's child $pid still runs"
    fi
}

@test "the interpreter cache: a damaged entry is ignored and rewritten" {
    local real
    real=$(real_python)
    run -0 tpar run --python "$real" -I "$D" where:where
    local f
    f=$(ls "$XDG_CACHE_HOME"/tpar/python-*)
    [ -s "$f" ] || fail "no cache entry"
    printf 'garbage' >"$f"
    run -0 --separate-stderr tpar run --python "$real" -I "$D" where:where
    expect_served "$real" "$output"
    grep -q '^tpar-interp-' "$f" || fail "cache entry not rewritten"
    # One that names a libpython that is gone is stale, too.
    sed -i 's|/libpython3|/gone-libpython3|' "$f"
    run -0 --separate-stderr tpar run --python "$real" -I "$D" where:where
    expect_served "$real" "$output"
    # No cache at all (HOME unwritable) still works.
    XDG_CACHE_HOME=/proc/nope run -0 --separate-stderr tpar run --python "$real" -I "$D" where:where
    expect_served "$real" "$output"
}

@test "no binary of the build has a RUNPATH, nor tpar-worker a libpython to point at" {
    local f
    for f in "$BUILD_DIR"/cmd/tpar "$BUILD_DIR"/pyworker/tpar-worker "$BUILD_DIR"/pyworker/_worker.*.so; do
        [ -f "$f" ] || continue
        run -0 readelf -d "$f"
        refute_output --regexp '\((RUNPATH|RPATH)\)'
        refute_output --partial 'libpython'
    done
}
