# Shared helpers for the tpar CLI tests.  Each .bats file does `load test_helper`.
#
# The binary under test is $TPAR_BIN, else $BUILD_DIR/cmd/tpar (scripts/test
# sets BUILD_DIR to the absolute build dir), else build/cmd/tpar.

bats_require_minimum_version 1.5.0
load '/usr/lib/bats/bats-support/load'
load '/usr/lib/bats/bats-assert/load'

CLI_TESTS="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$CLI_TESTS/../.." && pwd)"
FIXTURES="$CLI_TESTS/fixtures"
: "${BUILD_DIR:=$REPO_ROOT/build}"
TPAR="${TPAR_BIN:-$BUILD_DIR/cmd/tpar}"
# Longest a single tpar command may run before the test calls it a hang.
: "${TPAR_TEST_TIMEOUT:=30}"
export FIXTURES TPAR
# A job's print() must not reach a terminal; jobs and tpar see no colour.
unset NO_COLOR

# tpar ARGS...: the binary under test, killed (status 124) if it hangs.
tpar() {
    timeout -k 5 "$TPAR_TEST_TIMEOUT" "$TPAR" "$@"
}

# The project venv's python (scripts/setup makes .venv/), else the real
# python3 (pyenv's shim costs ~100 ms per call), cached per run.
real_python() {
    local cache="$BATS_RUN_TMPDIR/real_python"
    if [ ! -s "$cache" ]; then
        if [ -x "$REPO_ROOT/.venv/bin/python" ]; then
            echo "$REPO_ROOT/.venv/bin/python" >"$cache.$$"
        else
            python3 -c 'import sys; print(sys.executable)' >"$cache.$$"
        fi
        mv "$cache.$$" "$cache"
    fi
    cat "$cache"
}

# job FN ARGS_JSON [KWARGS_JSON [ID_JSON]]: one job line on stdout.
job() {
    local fn=$1 args=${2:-[]} kwargs=${3:-} id=${4:-}
    local line
    line=$(jq -nc --arg fn "$fn" --argjson a "$args" '{fn: $fn, args: $a}')
    if [ -n "$kwargs" ]; then
        line=$(jq -c --argjson k "$kwargs" '. + {kwargs: $k}' <<<"$line")
    fi
    if [ -n "$id" ]; then
        line=$(jq -c --argjson i "$id" '{id: $i} + .' <<<"$line")
    fi
    printf '%s\n' "$line"
}

# assert_jsonl FILE: every line of FILE is one JSON object (so no two
# records ever shared or split a line).
assert_jsonl() {
    local file=$1 bad
    bad=$(jq -R -r 'if (try (fromjson | type == "object") catch false)
                    then empty else . end' <"$file" | head -3)
    if [ -n "$bad" ]; then
        fail "$file: lines that are not one JSON object each: ${bad:0:600}"
    fi
}

# assert_output_jsonl: the same for the $output of the last `run`.
assert_output_jsonl() {
    local f="$BATS_TEST_TMPDIR/.output.jsonl"
    printf '%s\n' "$output" | grep -v '^$' >"$f" || true
    assert_jsonl "$f"
}

# results FILE: the result records of FILE, one per line (compact).
results() {
    jq -c 'select(.type == "result")' "$1"
}

# count_status FILE STATUS: how many result records have that status.
count_status() {
    jq -s --arg s "$2" '[.[] | select(.type == "result" and .status == $s)] | length' "$1"
}

# assert_one_record_per_line INPUT OUTPUT: as many result records as
# non-empty input lines, and every seq is distinct.
assert_one_record_per_line() {
    local input=$1 out=$2 nin nrec nseq
    assert_jsonl "$out"
    nin=$(grep -c -v '^$' "$input" || true)
    nrec=$(jq -s '[.[] | select(.type == "result")] | length' "$out")
    nseq=$(jq -s '[.[] | select(.type == "result") | .seq] | unique | length' "$out")
    [ "$nrec" -eq "$nin" ] ||
        fail "expected $nin result records (one per input line), got $nrec: $(head -c 800 "$out")"
    [ "$nseq" -eq "$nrec" ] ||
        fail "expected $nrec distinct seqs, got $nseq: $(head -c 800 "$out")"
}

# worker_pids FILE: the distinct worker pids named by FILE's records.
worker_pids() {
    jq -r 'select(.type == "result" and (.worker | type) == "number") | .worker' "$1" | sort -un
}

# pid_state PID: the state letter of PID, or nothing when it does not exist.
pid_state() {
    local stat
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 0
    stat=${stat##*) }
    printf '%s\n' "${stat%% *}"
}

# pid_ppid PID
pid_ppid() {
    local stat
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 0
    stat=${stat##*) }
    stat=${stat#* }
    printf '%s\n' "${stat%% *}"
}

# assert_pids_gone PID...: none of these processes runs any more, and none
# is a zombie that tpar left unreaped.  A zombie whose parent is init is
# being reaped by init (its parent died, e.g. a worker killed with its job's
# child), so it counts as gone.  Polls for up to 5 s: SIGKILL and
# PR_SET_PDEATHSIG land asynchronously.
assert_pids_gone() {
    local p st left deadline=$((SECONDS + 5))
    while :; do
        left=()
        for p in "$@"; do
            [ -n "$p" ] || continue
            st=$(pid_state "$p")
            [ -z "$st" ] && continue
            [ "$st" = Z ] && [ "$(pid_ppid "$p")" = 1 ] && continue
            left+=("$p")
        done
        [ ${#left[@]} -eq 0 ] && return 0
        if [ $SECONDS -ge $deadline ]; then
            fail "processes still there: $(ps -o pid,ppid,stat,args -p "$(
                IFS=,; echo "${left[*]}")" 2>&1)"
            return 1
        fi
        sleep 0.05
    done
}

# wait_files DIR PREFIX N: waits (up to 20 s) until DIR holds N files named
# PREFIX* (as the fixtures write them: atomically).
wait_files() {
    local d=$1 prefix=$2 n=$3 deadline=$((SECONDS + 20)) have
    while :; do
        have=$(find "$d" -maxdepth 1 -name "$prefix*" ! -name '*.tmp.*' | wc -l)
        [ "$have" -ge "$n" ] && return 0
        if [ $SECONDS -ge $deadline ]; then
            fail "waited for $n files $d/$prefix*, have $have"
            return 1
        fi
        sleep 0.02
    done
}

# file_values DIR PREFIX: the contents (pids) of DIR/PREFIX* files.
file_values() {
    local f
    for f in "$1/$2"*; do
        [ -e "$f" ] || continue
        case $f in *.tmp.*) continue ;; esac
        cat "$f"
        echo
    done
}

# start_tpar IN OUT ERR ARGS...: starts tpar in the background with stdin
# from IN and stdout/stderr to OUT/ERR; its pid is in $TPAR_PID.
start_tpar() {
    local in=$1 out=$2 err=$3
    shift 3
    "$TPAR" "$@" <"$in" >"$out" 2>"$err" 3>&- &
    TPAR_PID=$!
}

# wait_tpar: waits (up to $TPAR_TEST_TIMEOUT s) for the background tpar to
# end; its exit status is in $TPAR_STATUS.  A hang fails the test.
wait_tpar() {
    local deadline=$((SECONDS + TPAR_TEST_TIMEOUT))
    while kill -0 "$TPAR_PID" 2>/dev/null &&
          [ "$(pid_state "$TPAR_PID")" != Z ]; do
        if [ $SECONDS -ge $deadline ]; then
            kill -9 "$TPAR_PID" 2>/dev/null
            wait "$TPAR_PID" 2>/dev/null
            fail "tpar (pid $TPAR_PID) did not end within ${TPAR_TEST_TIMEOUT}s"
            return 1
        fi
        sleep 0.02
    done
    TPAR_STATUS=0
    wait "$TPAR_PID" || TPAR_STATUS=$?
}

# tpar_children PID: the pids of PID's child processes.
tpar_children() {
    local c
    for c in /proc/"$1"/task/*/children; do
        cat "$c" 2>/dev/null
    done | tr ' ' '\n' | grep -v '^$' || true
}

# jobs_n N FN ARGS_JQ: N job lines for FN; ARGS_JQ is a jq expression for
# the args array, with . the line's number from 1 ("[.]", "[]").
jobs_n() {
    jq -nc --arg fn "$2" --argjson n "$1" "range(1; \$n + 1) | {fn: \$fn, args: ($3)}"
}

# usage_error ARGS...: exit 255, one line on stderr, no records.
usage_error() {
    run -255 --separate-stderr tpar "$@" </dev/null
    assert_equal "$output" ""
    [ "${#stderr_lines[@]}" -eq 1 ] ||
        fail "expected one line on stderr, got ${#stderr_lines[@]}: $stderr"
}
