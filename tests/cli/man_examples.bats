#!/usr/bin/env bats
# man/tpar.1: it renders without warnings, documents every option and exit
# status, and every command of its EXAMPLES section runs (exit 0, JSON
# lines out).  An example is a line starting with "$ " inside an .EX/.EE
# block of EXAMPLES, taken as the reader sees it (rendered by groff).

load test_helper

setup() {
    command -v groff >/dev/null || skip "groff is not installed (apt-get install groff-base)"
}

MAN="$REPO_ROOT/man/tpar.1"

# rendered: the page as plain text, as wide as its longest line needs.
rendered() {
    groff -man -Tascii -P-cbou -rLL=250n "$MAN" 2>/dev/null
}

# examples: the EXAMPLES commands, one per line, without the "$ ".
examples() {
    rendered | sed -n '/^EXAMPLES$/,/^[A-Z][A-Z ]*$/p' |
        sed -n 's/^ *\$ //p'
}

@test "man: renders without warnings" {
    run -0 --separate-stderr groff -man -Tutf8 -ww "$MAN"
    assert_equal "$stderr" ""
    [ "${#lines[@]}" -gt 100 ] || fail "the page is only ${#lines[@]} lines"
    if command -v man >/dev/null; then
        run -0 --separate-stderr man --warnings -l "$MAN"
        assert_equal "$stderr" ""
    fi
}

@test "man: has every section" {
    local s
    for s in NAME SYNOPSIS DESCRIPTION OPTIONS RECORDS "EXIT STATUS" SIGNALS \
             ENVIRONMENT EXAMPLES "SEE ALSO"; do
        grep -q "^\.SH \"\?$s\"\?\$" "$MAN" || fail "no section $s"
    done
}

@test "man: documents every option, status, exit status and variable" {
    local text o
    text=$(rendered)
    for o in -j --jobs -k --keep-order --timeout --retries --retry-on --halt \
             --max-tasks-per-worker --max-worker-rss --idle-timeout --init \
             -I --path --joblog --resume --progress --total -o --output \
             -q --quiet --summary --max-line --max-buffer --star --args --kwargs --help \
             --worker-type --preload --prestart --no-progress -V --version \
             --resume-failed --raw -0 --null --dry-run --capture --tag --stats; do
        grep -qE -- "^ {7}(.*, )?$o( |,|\$)" <<<"$text" ||
            fail "option $o has no entry of its own"
    done
    for o in ok error timeout broken cancelled bad_input; do
        grep -qE "^ {7,}$o( |\$)" <<<"$text" || fail "status $o is not described"
    done
    for o in 0 101 130 143 255 "1 to 100"; do
        grep -qE "^ {7}$o( |\$)" <<<"$text" || fail "exit status $o is not described"
    done
    for o in TPAR_WORKER VIRTUAL_ENV NO_COLOR SIGINT SIGTERM SIGPIPE; do
        grep -qE "^ {7}(.*, )?$o( |,|\$)" <<<"$text" || fail "$o has no entry"
    done
}

@test "man: --help points to the man page" {
    run -0 tpar --help
    assert_output --regexp 'man tpar|tpar\(1\)'
}

@test "man: there are examples to run" {
    run -0 examples
    [ "${#lines[@]}" -ge 10 ] || fail "only ${#lines[@]} examples: $output"
    # Every example uses tpar, jq, printf or seq, nothing the test lacks.
    run -0 grep -cE '(^| )tpar ' < <(examples)
    [ "$output" -ge 8 ] || fail "only $output examples run tpar"
}

@test "man: every EXAMPLES command exits 0 and prints JSON lines" {
    local bindir n=0 cmd out
    bindir=$(cd "$(dirname "$TPAR")" && pwd)
    cd "$BATS_TEST_TMPDIR"
    while IFS= read -r cmd; do
        n=$((n + 1))
        out="$BATS_TEST_TMPDIR/example.$n.out"
        PATH="$bindir:$PATH" timeout -k 5 60 bash -o pipefail -c "$cmd" \
            >"$out" 2>"$out.err" </dev/null ||
            fail "example $n failed with status $?: \$ $cmd
stderr: $(head -c 600 "$out.err")"
        if [ -n "$(jq -R -r 'if (try (fromjson | type == "object") catch false)
                             then empty else . end' "$out")" ]; then
            fail "example $n printed something that is not JSON lines: \$ $cmd
$(head -c 600 "$out")"
        fi
    done < <(examples)
    [ "$n" -ge 10 ] || fail "ran only $n examples"
}
