#!/usr/bin/env bash
# Mutation testing (mutmut) of services, domain, protocol and workers against the unit and
# integration tiers. Slow (tens of minutes to hours): not in CI. Record the score and the
# accepted surviving mutants in docs/testing.md whenever those modules change.
#
#   bash scripts/mutation.sh                       # everything configured in [tool.mutmut]
#   bash scripts/mutation.sh domain protocol       # only these packages' mutants
#   MUTATION_CHILDREN=2 bash scripts/mutation.sh   # parallel mutants (default 1: shared CPUs)
#
# Needs the services of scripts/services.sh (the integration tier). Results stay in ./mutants
# (git-ignored): `.venv/bin/mutmut results`, `.venv/bin/mutmut show NAME`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
.venv/bin/python -m pip install -q -e '.[dev,mutation]'
bash scripts/services.sh
patterns=()
for package in "$@"; do
  case "$package" in
    services | domain | protocol | workers) patterns+=("vendhub.${package}.*") ;;
    *) echo "unknown package '$package' (services, domain, protocol, workers)" >&2; exit 2 ;;
  esac
done
.venv/bin/mutmut run --max-children "${MUTATION_CHILDREN:-1}" "${patterns[@]}" || true
# Score: killed / (all mutants that ran); survivors are listed for review.
.venv/bin/mutmut results --all true 2>/dev/null | awk '
  /: killed$/ {k++} /: survived$/ {s++; print} /: timeout$/ {t++} /: suspicious$/ {q++}
  /: no tests$/ {n++}
  END {
    ran = k + s + t + q
    printf "killed %d, survived %d, timeout %d, suspicious %d, no tests %d", k, s, t, q, n
    if (ran) printf "; score %.1f%% (killed+timeout of those run)\n", 100 * (k + t) / ran
    else print ""
  }'
