# bash completion for tpar (installed as .../bash-completion/completions/tpar;
# or: source completions/tpar.bash).  Options, their fixed values, files
# and directories; the run and map commands.

_tpar_opts='-j --jobs -k --keep-order --timeout --retries --retry-on --halt
--max-tasks-per-worker --max-worker-rss --idle-timeout --init -I --path
--joblog --resume --resume-failed --progress --no-progress --total -o --output -q --quiet
--summary --max-line --max-buffer --star --args --kwargs --raw -0 --null --dry-run --capture --tag --stats
--worker-type --preload --prestart --python --slurm --launcher --listen -h --help -V --version'

_tpar()
{
    local cur=${COMP_WORDS[COMP_CWORD]} prev=
    [ "$COMP_CWORD" -gt 0 ] && prev=${COMP_WORDS[COMP_CWORD-1]}
    COMPREPLY=()
    case $prev in
    --worker-type)
        mapfile -t COMPREPLY < <(compgen -W 'spawn forkserver' -- "$cur"); return ;;
    --retry-on)
        mapfile -t COMPREPLY < <(compgen -W 'broken timeout error broken,timeout' -- "$cur"); return ;;
    --halt)
        mapfile -t COMPREPLY < <(compgen -W 'never now,fail=1 soon,fail=1 now,fail=10% soon,fail=10%' -- "$cur"); return ;;
    -j|--jobs)
        mapfile -t COMPREPLY < <(compgen -W '1 2 4 8 0 +1 -1 50% 100%' -- "$cur"); return ;;
    -o|--output|--joblog|--resume|--resume-failed|--python|::::)
        mapfile -t COMPREPLY < <(compgen -f -- "$cur"); return ;;
    -I|--path)
        mapfile -t COMPREPLY < <(compgen -d -- "$cur"); return ;;
    --timeout|--retries|--max-tasks-per-worker|--max-worker-rss|--idle-timeout|\
    --init|--total|--max-line|--max-buffer|--args|--kwargs|--preload|--prestart|--capture|\
    --launcher|--listen)
        return ;;
    esac
    if [[ $cur == -* ]]; then
        mapfile -t COMPREPLY < <(compgen -W "$_tpar_opts" -- "$cur")
        return
    fi
    # The first word that is not an option (or an option's value) may be a
    # command.
    local i w words=0
    for ((i = 1; i < COMP_CWORD; i++)); do
        w=${COMP_WORDS[i]}
        case $w in
        --worker-type|--retry-on|--halt|-j|--jobs|-o|--output|--joblog|--resume|\
        --resume-failed|--python|-I|--path|--timeout|--retries|--max-tasks-per-worker|\
        --max-worker-rss|--idle-timeout|--init|--total|--max-line|--max-buffer|--args|--kwargs|\
        --preload|--prestart|--capture|--launcher|--listen) ((i++)) ;;
        -*) ;;
        *) words=$((words + 1)) ;;
        esac
    done
    if [ "$words" -eq 0 ]; then
        mapfile -t COMPREPLY < <(compgen -W 'run map' -- "$cur")
    fi
    local f
    mapfile -t f < <(compgen -f -- "$cur")
    COMPREPLY+=("${f[@]}")
}
complete -o filenames -F _tpar tpar
