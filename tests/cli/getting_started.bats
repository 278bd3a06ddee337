#!/usr/bin/env bats
# Getting started (issue 14): what `meson install` puts where, `man tpar`,
# `tpar --help` from PATH, the bash completion, the README's links.

load test_helper

setup() {
    D="$BATS_TEST_TMPDIR"
}

# meson_install DESTDIR: installs the build's programs, manual and
# completion (the tags scripts/demo installs) under DESTDIR.
meson_install() {
    local py
    py=$(real_python)
    "$py" -c 'import mesonbuild' 2>/dev/null || skip "meson is not importable from $py"
    "$py" -m mesonbuild.mesonmain install -C "$BUILD_DIR" --no-rebuild --tags runtime,man \
        --destdir "$1" >"$D/install.log" 2>&1 || fail "meson install: $(tail -5 "$D/install.log")"
}

@test "install: tpar, tpar-worker, the manual and the completion land under the prefix" {
    meson_install "$D/root"
    local prefix
    prefix=$(find "$D/root" -path '*/bin/tpar' -printf '%h\n' | head -1)
    [ -n "$prefix" ] || fail "no bin/tpar under $D/root: $(find "$D/root" | head -20)"
    prefix=${prefix%/bin}
    [ -x "$prefix/bin/tpar-worker" ] || fail "no bin/tpar-worker"
    [ -f "$prefix/share/man/man1/tpar.1" ] || fail "no share/man/man1/tpar.1"
    [ -f "$prefix/share/bash-completion/completions/tpar" ] || fail "no bash completion"
    # From PATH, in another directory: --help, a job, and man finds the page.
    cd "$D"
    PATH="$prefix/bin:$PATH" run -0 bash -c 'tpar --help'
    assert_output --partial 'usage: tpar'
    PATH="$prefix/bin:$PATH" run -0 bash -c 'tpar run operator:add --args "[1, 2]"'
    assert_output --partial '"value":3'
    PATH="$prefix/bin:$PATH" run -0 man -w tpar
    assert_output "$prefix/share/man/man1/tpar.1"
    PATH="$prefix/bin:$PATH" MANWIDTH=80 run -0 man -P cat tpar
    assert_output --partial 'tpar - run Python function calls in parallel'
}

@test "install: the Python package's wheel mapping puts the manual where man finds it from PATH" {
    # meson-python maps {datadir} to the wheel's data scheme (the prefix):
    # <prefix>/man/man1/tpar.1, which man finds through <prefix>/bin on PATH.
    mkdir -p "$D/venv/bin" "$D/venv/man/man1"
    cp "$REPO_ROOT/man/tpar.1" "$D/venv/man/man1/"
    ln -s "$TPAR" "$D/venv/bin/tpar"
    PATH="$D/venv/bin:$PATH" run -0 man -w tpar
    assert_output "$D/venv/man/man1/tpar.1"
    run -0 "$(real_python)" -m mesonbuild.mesonmain introspect --installed "$BUILD_DIR"
    run -0 jq -r 'to_entries[] | .value' <<<"$output"
    assert_output --regexp '/share/man/man1/tpar\.1'
}

# complete_words WORDS...: what the completion offers for the last word.
complete_words() {
    bash -c '
        source "$1"; shift
        COMP_WORDS=("$@"); COMP_CWORD=$(($# - 1))
        _tpar
        printf "%s\n" "${COMPREPLY[@]}"' _ "$REPO_ROOT/completions/tpar.bash" "$@"
}

@test "completion: options, commands, and the values of --worker-type" {
    run -0 complete_words tpar --work
    assert_output --worker-type
    run -0 complete_words tpar --worker-type ''
    assert_output $'spawn\nforkserver'
    run -0 complete_words tpar ma
    assert_line map
    run -0 complete_words tpar --halt n
    assert_line 'now,fail=1'
    cd "$D" && touch jobs.jsonl
    run -0 complete_words tpar -j 2 jo
    assert_output jobs.jsonl
}

@test "completion: offers exactly the long options tpar has" {
    local have want
    want=$(grep -oE '^\s*\{"[a-z-]+",' "$REPO_ROOT/cmd/options.c" | grep -oE '[a-z-]+' | sed 's/^/--/' | sort -u)
    have=$(complete_words tpar -- | sort -u)
    assert_equal "$have" "$want"
}

@test "docs: README and python/README.md link only files the repository holds" {
    local f link target
    for f in README.md python/README.md docs/*.md bench/README.md; do
        while IFS= read -r link; do
            case $link in http://* | https://* | '#'*) continue ;; esac
            target=${link%%#*}
            case $target in
            /*) target="$REPO_ROOT$target" ;;
            *) target="$(dirname "$REPO_ROOT/$f")/$target" ;;
            esac
            [ -e "$target" ] || fail "$f links to $link, which the repository does not hold"
        done < <(grep -oE '\]\([^)]+\)' "$REPO_ROOT/$f" | sed -E 's/^\]\((.*)\)$/\1/')
        ! grep -n '\.\./\.\./' "$REPO_ROOT/$f" || fail "$f points outside the repository"
    done
}

@test "docs: the README opens as a user's page and keeps the benchmark tables in bench/README.md" {
    local lines bench
    lines=$(wc -l <"$REPO_ROOT/README.md")
    bench=$(grep -c '^|' "$REPO_ROOT/README.md" || true)
    [ "$bench" -lt $((lines / 5)) ] || fail "README: $bench of $lines lines are table rows"
    grep -q 'bench/README.md' "$REPO_ROOT/README.md" || fail "README does not link bench/README.md"
    grep -q '^## The latest full run' "$REPO_ROOT/bench/README.md" || fail "no tables in bench/README.md"
}
