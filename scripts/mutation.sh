#!/usr/bin/env bash
# Mutation testing (mutmut) of services, domain, protocol and workers against the unit and
# integration tiers. Slow (hours for everything): not in CI. Record the score and the accepted
# surviving mutants in docs/testing.md whenever those modules change.
#
#   bash scripts/mutation.sh                          # all four packages, unit + integration
#   bash scripts/mutation.sh domain protocol          # only these packages
#   MUTATION_TIERS=unit bash scripts/mutation.sh domain protocol   # a quicker pass
#   MUTATION_DATABASES=sqlite bash scripts/mutation.sh workers     # integration tier on SQLite only
#   MUTATION_MUTANTS='vendhub.services.refunds.*' bash scripts/mutation.sh services  # these mutants
#   MUTATION_CHILDREN=2 bash scripts/mutation.sh      # mutants in parallel (default 1)
#
# Settings (environment):
#   MUTATION_TIERS      test tiers to run against (default "unit integration")
#   MUTATION_DATABASES  integration backends kept, of "sqlite postgresql mysql" (default all
#                       three). The integration tier is parametrised over the three; each mutant
#                       is checked against the kept ones only. "sqlite" makes a run ~3x shorter.
#   MUTATION_TIMEOUT    pytest-timeout per test in seconds (default 300). mutmut's trampolines
#                       make every call of a mutated module slower, and the run is niced, so
#                       the suite's 120 s is too short on a busy machine. Tests that carry
#                       their own timeout mark keep it.
#   MUTATION_IGNORE     test files left out (default: the files of the simulator, firmware,
#                       device checker, embedded broker and preflight, which call none of the
#                       mutated packages, and the randomised schemathesis fuzzing). Every
#                       selected test must pass in mutmut's first, instrumented run; these are
#                       timing-sensitive under a niced, traced run and only cost time.
#   MUTATION_MUTANTS    mutant name globs to (re)check, e.g. 'vendhub.workers.*'; default:
#                       every mutant not checked yet. MUTATION_MUTANTS_FILE: the same, one
#                       name or glob per line (for long lists).
#   MUTATION_FRESH=1    throw away earlier results; otherwise results of mutants already
#                       checked are kept (mutmut re-checks a function only when it changed), so
#                       a run can be stopped (kill its process group) and resumed.
#   MUTATION_CHILDREN   mutants checked in parallel (default 1)
#
# mutmut runs under `nice -n 19`: on a shared machine it takes idle CPU only. It first runs the
# selected tests once to record which tests call which function, then checks each mutant with
# only the tests that cover its function.
#
# Runs in a copy (.mutation/, git-ignored) so the configuration can follow the arguments and
# the checkout stays untouched. Afterwards: `cd .mutation && ../.venv/bin/mutmut results`,
# `../.venv/bin/mutmut show NAME` for one mutant's diff.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
bash scripts/bootstrap.sh
.venv/bin/python -m pip install -q -e '.[dev,mutation]'
bash scripts/services.sh

packages=("$@")
[ ${#packages[@]} -gt 0 ] || packages=(services domain protocol workers)
only=""
for package in "${packages[@]}"; do
  case "$package" in
    services | domain | protocol | workers) only+="\"src/vendhub/${package}/*\", " ;;
    *) echo "unknown package '$package' (services, domain, protocol, workers)" >&2; exit 2 ;;
  esac
done
tiers=${MUTATION_TIERS:-unit integration}
tests=""
for tier in $tiers; do
  tests+="\"tests/${tier}\", "
done
databases=${MUTATION_DATABASES:-sqlite postgresql mysql}
deselect=""
for backend in sqlite postgresql mysql; do
  case " $databases " in
    *" $backend "*) ;;
    # Parametrised ids start with the backend: test_x[postgresql] or test_x[postgresql-case].
    *) deselect+="${deselect:+ and }not [${backend}" ;;
  esac
done
for backend in $databases; do
  case "$backend" in
    sqlite | postgresql | mysql) ;;
    *) echo "unknown database '$backend' (sqlite, postgresql, mysql)" >&2; exit 2 ;;
  esac
done
selection=""
[ -z "$deselect" ] || selection="\"-k\", \"${deselect}\", "
default_ignore="tests/unit/test_firmware_protocol.py tests/unit/test_bench_table.py
  tests/integration/test_sim_broker.py tests/integration/test_firmware_micropython.py
  tests/integration/test_host_firmware.py tests/integration/test_devicecheck.py
  tests/integration/test_embedded_broker.py tests/integration/test_preflight.py
  tests/integration/test_schemathesis.py"
for file in ${MUTATION_IGNORE-$default_ignore}; do
  selection+="\"--ignore\", \"${file}\", "
done

work=.mutation
[ "${MUTATION_FRESH:-0}" != 1 ] || rm -rf "$work"
mkdir -p "$work"
# Fresh copies of the code and tests (some tests read README.md and firmware/);
# .mutation/mutants (mutmut's results) is kept.
rm -rf "$work/src" "$work/tests" "$work/firmware"
cp -r src tests firmware "$work"/
cp pyproject.toml README.md "$work"/
cat >>"$work/pyproject.toml" <<EOF

[tool.mutmut]
source_paths = ["src/vendhub/"]
also_copy = ["firmware/", "README.md"]
only_mutate = [${only}]
pytest_add_cli_args_test_selection = [${tests}]
# Fixed order: mutmut picks the fastest covering tests first.
pytest_add_cli_args = ["-p", "no:randomly", "-p", "no:cacheprovider", "-q", "--timeout", "${MUTATION_TIMEOUT:-300}", ${selection}]
EOF
cd "$work"
read -r -a mutants <<<"${MUTATION_MUTANTS:-}"
if [ -n "${MUTATION_MUTANTS_FILE:-}" ]; then
  while read -r name; do [ -z "$name" ] || mutants+=("$name"); done <"$MUTATION_MUTANTS_FILE"
fi
nice -n 19 "$root/.venv/bin/mutmut" run --max-children "${MUTATION_CHILDREN:-1}" "${mutants[@]}" || true
# Score: killed (or timed out) / mutants that ran; survivors listed for review.
"$root/.venv/bin/mutmut" results --all true 2>/dev/null | awk \
  -v PACKAGES="${packages[*]}" -v TIERS="$tiers" -v DATABASES="$databases" '
  /: killed$/ {k++} /: survived$/ {s++; print} /: timeout$/ {t++} /: suspicious$/ {q++}
  /: no tests$/ {n++} /: not checked$/ {c++} /: skipped$/ {n++}
  /: segfault$/ || /: check was interrupted by user$/ {o++; print}
  END {
    ran = k + s + t + q
    printf "packages: %s; tiers: %s; databases: %s\n", PACKAGES, TIERS, DATABASES
    printf "killed %d, survived %d, timeout %d, suspicious %d, no tests %d, not run %d, other %d", k, s, t, q, n, c, o
    if (ran) printf "; score %.1f%% (killed+timeout of those run)\n", 100 * (k + t) / ran
    else print ""
  }'
