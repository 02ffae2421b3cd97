#!/usr/bin/env bash
# Mutation testing (issue 21), outside CI: never run by .ci/run.
#
#   tools/mutation.sh urls serve/sign system    # modules under credential_helper/, without .py
#   tools/mutation.sh --results                 # the last run's counts again, per module
#
# mutmut 3.8.1 (with libcst 1.9.0) in a virtual environment of its own,
# build/mutation/venv, with the package and its [test] extra; never in the
# project's dependencies. The tree is copied to build/mutation/work and mutmut
# runs there (its mutants/ directory and setup.cfg stay out of the checkout). The
# tests each mutant runs are chosen by tools/mutation_tier.py: the unit tier and
# a few in-process files. Everything runs under nice -n 19 with at most two
# workers (MUTATION_CHILDREN). A run resumes where the last one stopped when
# MUTATION_RESUME=1; otherwise it starts afresh. MUTATION_TREE=COMMIT runs the
# package and tests of that commit instead of the checkout (a "before"). Each mutant's status is kept in
# build/mutation/results-$MUTATION_LABEL.txt (default "last").
# Extra arguments after `--` are mutant names or globs passed to `mutmut run`
# (a sample: tools/mutation.sh urls -- 'credential_helper.urls.x_*__mutmut_1*').
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
out=$root/build/mutation
venv=$out/venv
work=$out/work
children=${MUTATION_CHILDREN:-2}

summary() {
    # Every mutant's status, kept beside the work directory (the next run replaces that).
    (cd "$work" && "$venv/bin/mutmut" results --all true) >"$out/results-${MUTATION_LABEL:-last}.txt"
    "$venv/bin/python" "$root/tools/mutation_summary.py" <"$out/results-${MUTATION_LABEL:-last}.txt"
}

if [ "${1:-}" = "--results" ]; then
    summary
    exit 0
fi

modules=()
names=()
while [ $# -gt 0 ]; do
    if [ "$1" = "--" ]; then
        shift
        names=("$@")
        break
    fi
    modules+=("$1")
    shift
done
if [ ${#modules[@]} -eq 0 ]; then
    echo "usage: tools/mutation.sh MODULE... [-- MUTANT_NAME...]   (modules as in urls, serve/sign)" >&2
    exit 2
fi
for module in "${modules[@]}"; do
    [ -f "credential_helper/$module.py" ] || { echo "tools/mutation.sh: no credential_helper/$module.py" >&2; exit 2; }
done

if [ ! -x "$venv/bin/mutmut" ]; then
    python3 -m venv "$venv"
    nice -n 19 "$venv/bin/pip" install -q -e ".[test]" "mutmut==3.8.1" "libcst==1.9.0"
fi

if [ "${MUTATION_RESUME:-0}" != 1 ]; then
    rm -rf "$work"
fi
mkdir -p "$work"
if [ -n "${MUTATION_TREE:-}" ]; then
    # A committed tree (MUTATION_TREE=COMMIT): how a "before" is measured again.
    git -C "$root" archive "$MUTATION_TREE" | tar -C "$work" -xf -
else
    # The checkout as it is now (uncommitted tests included), without build/ and git's files.
    tar -C "$root" --exclude=./build --exclude=./.git --exclude=./.venv --exclude=__pycache__ \
        --exclude=./.hypothesis --exclude=./.pytest_cache -cf - . | tar -C "$work" -xf -
fi
{
    echo "[mutmut]"
    echo "source_paths = credential_helper"
    echo "only_mutate ="
    for module in "${modules[@]}"; do echo "    credential_helper/$module.py"; done
    # What the tests read beside the package (golden vectors, the README, the man page, .ci).
    echo "also_copy ="
    for extra in golden man benchmarks tools .ci README.md; do echo "    $extra"; done
    echo "pytest_add_cli_args ="
    echo "    -p"
    echo "    mutation_tier"
    echo "    -p"
    echo "    no:cacheprovider"
    echo "pytest_add_cli_args_test_selection ="
    echo "    tests"
} >"$work/setup.cfg"

started=$(date +%s)
cd "$work"
# A mutant may ignore the directory it is given (a cache, a lock) and write to the
# default one: every run gets a scratch home, never the user's (seen: ~/.cache
# entries and ~/AppData/Local locks left by an earlier run).
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
export HOME="$scratch" XDG_CACHE_HOME="$scratch/.cache" XDG_CONFIG_HOME="$scratch/.config" \
    LOCALAPPDATA="$scratch/AppData/Local" APPDATA="$scratch/AppData/Roaming"
PYTHONPATH="$root/tools" nice -n 19 "$venv/bin/mutmut" run --max-children "$children" "${names[@]}"
echo "tools/mutation.sh: mutmut ran $(($(date +%s) - started)) s"
summary
