#!/usr/bin/env bash
# Market data loading, timed (BENCHMARKS.md, "Runs: market data"):
#
#   bash ops/bench-data.sh            release binaries must be built (ops/bench.sh does it)
#   bash ops/bench-data.sh --quick    a smaller run (seconds; numbers not worth quoting)
#
# In a fresh database `bench_data_<random>` (dropped at the end), each step into an
# empty, indexed market_bars (TRUNCATE before each):
#   1. enginectl data generate: 500 symbols x 2 years of daily bars;
#   2. enginectl data generate: one symbol x 2 years of 1-minute bars;
#   3. those 1-minute bars exported to one CSV file
#      (symbol,interval,timestamp,open,high,low,close,volume; RFC 3339 times);
#   4. enginectl data import of that file;
#   5. psql \copy of the same file into market_bars: the ceiling PostgreSQL sets;
#   6. enginectl data import of it again over the loaded bars (a re-import replaces).
# Each line gives rows, seconds and rows/s (wall time of the whole command, from
# start to commit), and the import's ratio to psql \copy.
#
# Environment: DATABASE_URL (a URL through which the script may CREATE and DROP a
# database; default postgres://postgres@127.0.0.1:5432/postgres), CARGO_TARGET_DIR.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

ADMIN_URL="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
BIN_DIR="${CARGO_TARGET_DIR:-target}/release"
QUICK=0
[ "${1:-}" != --quick ] || QUICK=1

for bin in enginectl engine-manager; do
    [ -x "$BIN_DIR/$bin" ] || { echo "bench-data: $BIN_DIR/$bin is missing: cargo build --release --workspace --bins" >&2; exit 1; }
done

NAME="bench_data_$(head -c 6 /dev/urandom | od -An -tx1 | tr -d ' \n')"
# The admin URL with the bench database in place of its database.
DB_URL="$(printf '%s' "$ADMIN_URL" | sed -E "s#^(postgres(ql)?://[^/]*)(/[^?]*)?#\1/$NAME#")"
WORK="$(mktemp -d)"
cleanup() {
    psql "$ADMIN_URL" -X -q -c "DROP DATABASE IF EXISTS $NAME WITH (FORCE);" >/dev/null 2>&1 || true
    rm -rf "$WORK"
}
trap cleanup EXIT

db() { psql "$DB_URL" -X -w -q -v ON_ERROR_STOP=1 "$@"; }

"$BIN_DIR/engine-manager" --migrate-only --database-url "$DB_URL" >"$WORK/migrate.log" 2>&1 ||
    { cat "$WORK/migrate.log" >&2; exit 1; }

if [ "$QUICK" = 1 ]; then
    DAILY=(--symbols 20 --span 2y --interval 1d)
    MINUTE=(--tickers BENCH --span 30days --interval 1m)
else
    DAILY=(--symbols 500 --span 2y --interval 1d)
    MINUTE=(--tickers BENCH --span 2y --interval 1m)
fi

now() { date +%s.%N; }
rows_in() { db -At -c "SELECT count(*) FROM market_bars;"; }
# name rows seconds [ratio to the psql ceiling]
report() {
    NAME="$1" awk -v rows="$2" -v secs="$3" -v ceiling="${4:-}" 'BEGIN {
        rate = rows / secs
        line = sprintf("%-40s %10d rows %8.2f s %12.0f rows/s", ENVIRON["NAME"], rows, secs, rate)
        if (ceiling != "") line = line sprintf("   %.2fx the psql \\copy time", secs / ceiling)
        print line
    }'
}
timed() { # name, command...: runs it into an empty market_bars; sets SECS and ROWS
    local name=$1 start end
    shift
    db -c "TRUNCATE market_bars;"
    db -c "CHECKPOINT;" 2>/dev/null || true # a fair start for each (needs a superuser)
    start=$(now)
    "$@" >"$WORK/out.log" 2>&1 || { cat "$WORK/out.log" >&2; exit 1; }
    end=$(now)
    SECS=$(awk -v a="$start" -v b="$end" 'BEGIN { print b - a }')
    ROWS=$(rows_in)
}

echo "market data loading, $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg), PostgreSQL $(db -At -c 'SHOW server_version;')"

timed "generate, daily" "$BIN_DIR/enginectl" --database-url "$DB_URL" data generate "${DAILY[@]}" --seed 1 --end 2025-11-30
report "enginectl data generate ${DAILY[1]} x ${DAILY[3]} 1d" "$ROWS" "$SECS"

timed "generate, minutes" "$BIN_DIR/enginectl" --database-url "$DB_URL" data generate "${MINUTE[@]}" --seed 1 --end 2025-11-30
report "enginectl data generate 1 x ${MINUTE[3]} 1m" "$ROWS" "$SECS"

CSV="$WORK/BENCH.csv"
db -c "\\copy (SELECT symbol, interval, to_char(ts AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') AS timestamp, open, high, low, close, volume FROM market_bars WHERE symbol = 'BENCH' ORDER BY ts) TO '$CSV' (FORMAT csv, HEADER)"
echo "CSV: $(wc -l <"$CSV") lines, $(du -h "$CSV" | cut -f1) ($(sed -n 2p "$CSV"))"

timed "psql copy" db -c "\\copy market_bars FROM '$CSV' (FORMAT csv, HEADER)"
PSQL_SECS=$SECS
report "psql \\copy of the CSV (the ceiling)" "$ROWS" "$SECS"

timed "import" "$BIN_DIR/enginectl" --database-url "$DB_URL" data import "$CSV"
report "enginectl data import of the CSV" "$ROWS" "$SECS" "$PSQL_SECS"

start=$(now)
"$BIN_DIR/enginectl" --database-url "$DB_URL" data import "$CSV" >"$WORK/out.log" 2>&1 || { cat "$WORK/out.log" >&2; exit 1; }
SECS=$(awk -v a="$start" -v b="$(now)" 'BEGIN { print b - a }')
report "enginectl data import again (replaces)" "$(rows_in)" "$SECS" "$PSQL_SECS"
