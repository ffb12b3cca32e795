#!/usr/bin/env bash
# Mutation testing (mutmut) of services, domain, protocol and workers against the unit and
# integration tiers. Slow (hours for everything): not in CI. Record the score and the accepted
# surviving mutants in docs/testing.md whenever those modules change.
#
#   bash scripts/mutation.sh                          # all four packages, unit + integration
#   bash scripts/mutation.sh domain protocol          # only these packages
#   MUTATION_TIERS=unit bash scripts/mutation.sh domain protocol   # a quicker pass
#   MUTATION_CHILDREN=2 bash scripts/mutation.sh      # mutants in parallel (default 1)
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
tests=""
for tier in ${MUTATION_TIERS:-unit integration}; do
  tests+="\"tests/${tier}\", "
done

work=.mutation
rm -rf "$work"
mkdir -p "$work"
cp -r src tests pyproject.toml "$work"/
cat >>"$work/pyproject.toml" <<EOF

[tool.mutmut]
source_paths = ["src/vendhub/"]
only_mutate = [${only}]
pytest_add_cli_args_test_selection = [${tests}]
# Fixed order: mutmut picks the fastest covering tests first.
pytest_add_cli_args = ["-p", "no:randomly", "-p", "no:cacheprovider", "-q"]
EOF
cd "$work"
"$root/.venv/bin/mutmut" run --max-children "${MUTATION_CHILDREN:-1}" || true
# Score: killed (or timed out) / mutants that ran; survivors listed for review.
"$root/.venv/bin/mutmut" results --all true 2>/dev/null | awk \
  -v PACKAGES="${packages[*]}" -v TIERS="${MUTATION_TIERS:-unit integration}" '
  /: killed$/ {k++} /: survived$/ {s++; print} /: timeout$/ {t++} /: suspicious$/ {q++}
  /: no tests$/ {n++} /: not checked$/ {c++}
  END {
    ran = k + s + t + q
    printf "packages: %s; tiers: %s\n", PACKAGES, TIERS
    printf "killed %d, survived %d, timeout %d, suspicious %d, no tests %d, not run %d", k, s, t, q, n, c
    if (ran) printf "; score %.1f%% (killed+timeout of those run)\n", 100 * (k + t) / ran
    else print ""
  }'
