#!/usr/bin/env bash
# The benchmark suite in one command (see BENCHMARKS.md):
#
#   bash ops/bench.sh                      the full run (about 10 minutes on 2 cores)
#   bash ops/bench.sh --quick              a smoke-sized run (seconds)
#   bash ops/bench.sh --scales 10,50,200   any engine-bench flag (engine-bench --help)
#
# Then ops/bench-data.sh times market data loading (enginectl data generate and
# import against psql \copy; `--quick` makes it small too; BENCH_DATA=0 skips it).
#
# It makes sure PostgreSQL and Redis run (ops/ensure-services.sh), builds the release
# binaries, and runs target/release/engine-bench against the release engine-manager
# and strategy-executor. The table goes to stdout; the JSON to
# target/bench-results/latest.json (and a dated copy) unless you pass your own --json.
#
# Environment (each set only if unset):
#   DATABASE_URL  a URL the bench may create and drop `bench_<uuid>` databases through
#                 (default postgres://postgres@127.0.0.1:5432/postgres)
#   REDIS_URL     default redis://127.0.0.1:6379
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash ops/ensure-services.sh

export DATABASE_URL="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
export REDIS_URL="${REDIS_URL:-redis://127.0.0.1:6379}"

cargo build --release --workspace --bins

args=("$@")
json_given=0
for arg in "${args[@]}"; do
    case "$arg" in
        --json|--json=*) json_given=1 ;;
    esac
done
if [ "$json_given" -eq 0 ]; then
    mkdir -p target/bench-results
    stamp="$(date -u +%Y%m%dT%H%M%SZ)"
    args+=(--json "target/bench-results/$stamp.json")
fi

"${CARGO_TARGET_DIR:-target}/release/engine-bench" "${args[@]}"

if [ "$json_given" -eq 0 ]; then
    cp "target/bench-results/$stamp.json" target/bench-results/latest.json
    echo "results: target/bench-results/$stamp.json (and latest.json beside it)" >&2
fi

if [ "${BENCH_DATA:-1}" != 0 ]; then
    data_args=()
    for arg in "${args[@]}"; do [ "$arg" != --quick ] || data_args=(--quick); done
    bash ops/bench-data.sh "${data_args[@]}"
fi
