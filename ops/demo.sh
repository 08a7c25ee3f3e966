#!/usr/bin/env bash
# The engine, up and trading on simulated market data, in one command.
#
#   bash ops/demo.sh          build, start market-sim + engine-manager in the background,
#                             register three demo strategies and wait until they run;
#                             then load market data (500 symbols x 2 years of daily
#                             bars, one symbol x 2 years of 1-minute bars) and start a
#                             backtest and a screener run, showing their progress
#   bash ops/demo.sh status   show the demo strategies and the background processes
#   bash ops/demo.sh stop     global stop command (every strategy), then stop
#                             engine-manager and market-sim
#   bash ops/demo.sh restart-check
#                             with the demo up: SIGKILL the manager and start a new
#                             one, then SIGTERM it and start another, and check that
#                             every demo strategy kept its executor (same pid, same
#                             process start time) through both
#
# Running it again restarts market-sim and engine-manager cleanly. Strategies outlive
# the manager: the new manager adopts the executors that are still running.
#
# Environment:
#   DATABASE_URL          default postgres://postgres@127.0.0.1:5432/strategy_engine
#                         (the manager creates the database and applies migrations)
#   REDIS_URL             default redis://127.0.0.1:6379
#   ENGINE_REDIS_PREFIX   optional prefix for every Redis channel and key
#   ENGINE_STATE_DIR      default ./engine-state: pid files, logs, control socket
#   DEMO_TIMEOUT          seconds to wait for the strategies to run / stop (default 60)
#   DEMO_RUN_WAIT         seconds to show the demo runs' progress before the summary
#                         (default 30; they go on in the background either way)
#   DEMO_RELOAD_DATA=1    generate the market data again even when it is loaded
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

export DATABASE_URL="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/strategy_engine}"
export REDIS_URL="${REDIS_URL:-redis://127.0.0.1:6379}"
REDIS_PREFIX="${ENGINE_REDIS_PREFIX:-}"
STATE_DIR="${ENGINE_STATE_DIR:-$ROOT/engine-state}"
BIN_DIR="${CARGO_TARGET_DIR:-$ROOT/target}/release"
TIMEOUT="${DEMO_TIMEOUT:-60}"
RUN_WAIT="${DEMO_RUN_WAIT:-30}"
# The demo runs' market data: the same seed gives the same bars and tickers.
DATA_SEED=42
DAILY_SYMBOLS=500

MANAGER_BIN="$BIN_DIR/engine-manager"
SIM_BIN="$BIN_DIR/market-sim"
MANAGER_PID_FILE="$STATE_DIR/engine-manager.pid"
MANAGER_LOG="$STATE_DIR/engine-manager.log"
SIM_PID_FILE="$STATE_DIR/market-sim.pid"
SIM_LOG="$STATE_DIR/market-sim.log"

DEMO_NAMES_SQL="'demo-sma-btc', 'demo-sma-eth', 'demo-meanrev-sol'"

say() { printf '%s\n' "$*"; }
die() { printf 'demo: error: %s\n' "$*" >&2; exit 1; }

# psql against the engine database: no password prompt, stop at the first error.
db() { psql "$DATABASE_URL" -X -w -q -v ON_ERROR_STOP=1 -P pager=off "$@"; }
# One value or unaligned rows ('|' between fields).
db_value() { db -At -c "$1"; }

# DATABASE_URL with any password replaced by ***, for printing.
shown_database_url() { printf '%s' "$DATABASE_URL" | sed -E 's#(://[^:/@]+):[^@]*@#\1:***@#'; }

# Print the pid in $1 if that process is alive and is $2 (so a reused pid is never
# mistaken for ours). /proc/<pid>/comm holds at most 15 characters of the name.
live_pid() {
    local file=$1 name=$2 pid
    [ -f "$file" ] || return 1
    pid="$(cat "$file")"
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "${name:0:15}" ] || return 1
    printf '%s\n' "$pid"
}

# Stop the process named by a pid file: SIGTERM, wait up to $3 s, then SIGKILL.
stop_process() {
    local file=$1 name=$2 grace=$3 pid
    if pid="$(live_pid "$file" "$name")"; then
        say "$name: stopping (pid $pid)"
        kill -TERM "$pid" 2>/dev/null || true
        local deadline=$((SECONDS + grace))
        while kill -0 "$pid" 2>/dev/null && [ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" != "Z" ]; do
            if [ "$SECONDS" -ge "$deadline" ]; then
                say "$name: still running after ${grace}s, sending SIGKILL"
                kill -KILL "$pid" 2>/dev/null || true
                break
            fi
            sleep 0.2
        done
        say "$name: stopped"
    fi
    rm -f "$file"
}

# Start a long-running program in the background, in its own session (so Ctrl-C in
# this terminal and closing it do not reach it), output to a log file.
start_background() {
    local name=$1 pidfile=$2 log=$3
    shift 3
    # Keep every earlier log, named by when it was set aside (a restart-check starts
    # two managers within seconds: the nanoseconds keep the names apart).
    [ -f "$log" ] && mv -f "$log" "$log.$(date -u +%Y%m%dT%H%M%S.%NZ)"
    setsid nohup "$@" >"$log" 2>&1 </dev/null &
    printf '%s\n' "$!" >"$pidfile"
    say "$name: started (pid $!, log $log)"
}

print_demo_rows() {
    db -c "SELECT name, status, pid FROM strategy_configs WHERE name IN ($DEMO_NAMES_SQL) ORDER BY name;"
}

# --- start -------------------------------------------------------------------------

register_demo_strategies() {
    db <<'SQL'
INSERT INTO strategy_configs (name, strategy_type, config, auto_start) VALUES
  ('demo-sma-btc', 'sma_crossover',
   '{"token": "BTC-USD", "fast_period": 5, "slow_period": 20, "order_qty": 1.0}', true),
  ('demo-sma-eth', 'sma_crossover',
   '{"token": "ETH-USD", "fast_period": 5, "slow_period": 20, "order_qty": 1.0}', true),
  ('demo-meanrev-sol', 'mean_reversion',
   '{"token": "SOL-USD", "window": 20, "entry_z": 2.0, "exit_z": 0.5, "order_qty": 1.0}', true)
ON CONFLICT (name) DO NOTHING;
SQL
    say "database: demo strategies registered (demo-sma-btc, demo-sma-eth, demo-meanrev-sol)"
}

# Fresh demo strategies come up through auto_start alone. auto_start does not bring back
# a strategy whose last command was `stop` (e.g. after `demo.sh stop`), nor one in
# `error`: queue a start (or resume) for those only. A start for a strategy that is
# already running is a no-op, so this is safe to repeat.
queue_start_commands() {
    local queued
    queued="$(db_value "
        INSERT INTO strategy_commands (strategy_id, command)
        SELECT id, CASE WHEN desired_state = 'paused' AND status = 'paused' THEN 'resume' ELSE 'start' END
        FROM strategy_configs
        WHERE name IN ($DEMO_NAMES_SQL)
          AND (operator_stopped OR status = 'error')
        RETURNING id;")"
    QUEUED_COMMAND_IDS="$(printf '%s\n' "$queued" | grep . | sed "s/.*/'&'/" | paste -sd, - || true)"
    if [ -n "$QUEUED_COMMAND_IDS" ]; then
        say "database: queued start/resume for $(printf '%s\n' "$queued" | grep -c .) demo strategies"
    fi
}

# Called when the manager we started has exited: explain why and stop.
manager_died() {
    local pid=$1 rc=0
    wait "$pid" || rc=$?
    rm -f "$MANAGER_PID_FILE"
    if [ "$rc" -eq 3 ]; then
        say "--- last lines of $MANAGER_LOG:" >&2
        tail -n 5 "$MANAGER_LOG" >&2 || true
        die "engine-manager exited with code 3: another live engine-manager already serves this database (see the log above for its host and pid). Stop it (e.g. 'systemctl stop engine-manager') or point DATABASE_URL at another database."
    fi
    say "--- last lines of $MANAGER_LOG:" >&2
    tail -n 20 "$MANAGER_LOG" >&2 || true
    die "engine-manager exited with code $rc during start-up (full log: $MANAGER_LOG)"
}

wait_until_running() {
    local manager_pid=$1 deadline=$((SECONDS + TIMEOUT)) rows failed
    say "waiting up to ${TIMEOUT}s for the demo strategies to be running..."
    while :; do
        kill -0 "$manager_pid" 2>/dev/null || manager_died "$manager_pid"

        # A start command we queued that failed says why at once.
        if [ -n "$QUEUED_COMMAND_IDS" ]; then
            failed="$(db_value "
                SELECT s.name || ': ' || coalesce(c.error, 'no error given')
                FROM strategy_commands c JOIN strategy_configs s ON s.id = c.strategy_id
                WHERE c.id IN ($QUEUED_COMMAND_IDS) AND c.status = 'failed';")"
            [ -z "$failed" ] || die "a start command failed: $failed"
        fi

        # id|name|status|pid|has unfinished commands|last_error
        rows="$(db_value "
            SELECT s.id, s.name, s.status, coalesce(s.pid, 0),
                   EXISTS (SELECT 1 FROM strategy_commands c
                           WHERE (c.strategy_id = s.id OR c.strategy_id IS NULL)
                             AND c.status IN ('pending', 'processing')),
                   coalesce(s.last_error, '')
            FROM strategy_configs s WHERE s.name IN ($DEMO_NAMES_SQL) ORDER BY s.name;")"
        local running=0 id name status pid unfinished last_error
        failed=""
        while IFS='|' read -r id name status pid unfinished last_error; do
            # `running` counts only with a live executor behind it (its command line
            # carries --strategy-id <id>): after a reboot the table can still say
            # `running` until the manager has looked.
            if [ "$status" = running ] && [ -r "/proc/$pid/cmdline" ] \
                && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "$id"; then
                running=$((running + 1))
            fi
            # `error` is final only once no command for that strategy is still queued.
            if [ "$status" = error ] && [ "$unfinished" = f ]; then
                failed+="${failed:+; }$name: $last_error"
            fi
        done <<<"$rows"
        [ "$running" -lt 3 ] || return 0
        [ -z "$failed" ] || die "strategy in error: $failed (executor logs: $STATE_DIR/logs/<name>.log)"

        if [ "$SECONDS" -ge "$deadline" ]; then
            print_demo_rows >&2
            say "--- last lines of $MANAGER_LOG:" >&2
            tail -n 20 "$MANAGER_LOG" >&2 || true
            die "the demo strategies were not all running after ${TIMEOUT}s (logs: $MANAGER_LOG, $STATE_DIR/logs/)"
        fi
        sleep 1
    done
}

print_next_steps() {
    local redis_cli="redis-cli -u $REDIS_URL"
    local dashboard="(HTTP is off: ENGINE_HTTP_ADDR=off)"
    [ -s "$STATE_DIR/http.addr" ] && dashboard="http://$(tr -d '[:space:]' <"$STATE_DIR/http.addr")/"
    local ctl="$BIN_DIR/enginectl"
    [ "${ctl#"$ROOT"/}" = "$ctl" ] || ctl="${ctl#"$ROOT"/}"
    local btc_id
    btc_id="$(db_value "SELECT id FROM strategy_configs WHERE name = 'demo-sma-btc';")"
    cat <<EOF

The engine is running with three demo strategies on simulated market data
(demo-sma-btc, demo-sma-eth, demo-meanrev-sol).

From this shell, with enginectl (it reads the same DATABASE_URL, REDIS_URL,
ENGINE_REDIS_PREFIX and ENGINE_STATE_DIR as the manager; run it from $ROOT):
  $ctl list                      every strategy: status, pid, CPU, PnL, tick age
  $ctl watch                     the same, live
  $ctl stop demo-sma-btc         waits for the outcome and prints it
  $ctl start demo-sma-btc
  $ctl update demo-sma-eth --set fast_period=8
  $ctl history demo-sma-btc      its commands and transitions, with reasons
  $ctl logs demo-meanrev-sol -f  the executor's log
  $ctl doctor                    checks everything the engine depends on

Or through the database:
  psql '$(shown_database_url)'
  SELECT strategy_command('demo-sma-btc', 'stop');     -- returns the command id
  SELECT strategy_command('demo-sma-btc', 'start');
  SELECT engine_command('pause');                      -- every strategy (kill switch)
and read the outcome (status goes pending -> processing -> executed or failed):
  SELECT command, status, error, executed_at FROM strategy_commands ORDER BY created_at DESC LIMIT 10;
  SELECT name, status, pid, last_error FROM strategy_configs ORDER BY name;

Open the live web dashboard (same port: /metrics, /health, /api/strategies):
  $dashboard

Watch it live from another terminal:
  $redis_cli SUBSCRIBE ${REDIS_PREFIX}strategy:health
  $redis_cli PSUBSCRIBE '${REDIS_PREFIX}strategy:*'
  $redis_cli HGETALL ${REDIS_PREFIX}strategy:state:${btc_id}    (demo-sma-btc)

Logs: $MANAGER_LOG, $SIM_LOG, $STATE_DIR/logs/<name>.log
(earlier runs' manager and market-sim logs stay beside them, named by when they were
set aside: $MANAGER_LOG.<UTC time>)

Tear down:
  bash ops/demo.sh stop
EOF
}

# --- market data and runs ----------------------------------------------------------

# 500 symbols x 2 years of daily bars, and 2 years of 1-minute bars of the first of
# them (alphabetically), generated with a fixed seed. Loaded once: a demo started
# again finds them (DEMO_RELOAD_DATA=1 generates them again, replacing them).
load_market_data() {
    local ctl="$BIN_DIR/enginectl" daily minute started=$SECONDS
    daily="$(db_value "SELECT count(*) FROM market_bars WHERE interval = '1d';")"
    minute="$(db_value "SELECT count(*) FROM market_bars WHERE interval = '1m';")"
    if [ "${DEMO_RELOAD_DATA:-0}" != 1 ] && [ "$daily" -ge $((DAILY_SYMBOLS * 730)) ] && [ "$minute" -ge 1000000 ]; then
        say "market data: already loaded ($daily daily bars, $minute 1-minute bars; DEMO_RELOAD_DATA=1 loads it again)"
    else
        say "market data: $DAILY_SYMBOLS symbols x 2 years of daily bars, then 2 years of 1-minute bars of one of them"
        "$ctl" data generate --symbols "$DAILY_SYMBOLS" --span 2y --interval 1d --seed "$DATA_SEED" ||
            die "enginectl data generate (daily bars) failed"
        MINUTE_SYMBOL="$(db_value "SELECT symbol FROM securities ORDER BY symbol LIMIT 1;")"
        "$ctl" data generate --tickers "$MINUTE_SYMBOL" --span 2y --interval 1m --seed "$DATA_SEED" ||
            die "enginectl data generate (1-minute bars) failed"
        say "market data: loaded in $((SECONDS - started)) s (1,416,920 bars)"
    fi
    MINUTE_SYMBOL="$(db_value "SELECT symbol FROM market_bars WHERE interval = '1m' GROUP BY symbol ORDER BY count(*) DESC, symbol LIMIT 1;")"
    [ -n "$MINUTE_SYMBOL" ] || die "no 1-minute bars were loaded"
}

# Two strategies that only do runs (never started live), and one run of each: a
# backtest of sma_crossover over the 1-minute bars, a bullish_breakout screener over
# every active symbol's daily bars. A run is a row: the manager picks it up.
start_demo_runs() {
    db -v minute="$MINUTE_SYMBOL" <<'SQL'
INSERT INTO strategy_configs (name, strategy_type, config) VALUES
  ('demo-backtest-sma', 'sma_crossover',
   jsonb_build_object('token', :'minute', 'fast_period', 20, 'slow_period', 100, 'order_qty', 10.0)),
  ('demo-screener-breakout', 'bullish_breakout',
   jsonb_build_object('token', :'minute', 'min_score', 60))
ON CONFLICT (name) DO NOTHING;
SQL
    BACKTEST_RUN_ID="$(db_value "
        INSERT INTO strategy_runs (strategy_id, mode, parameters)
        SELECT id, 'backtest', jsonb_build_object('symbols', jsonb_build_array('$MINUTE_SYMBOL'),
                                                  'interval', '1m', 'fee_bps', 1)
        FROM strategy_configs WHERE name = 'demo-backtest-sma' RETURNING id;")"
    SCREENER_RUN_ID="$(db_value "
        INSERT INTO strategy_runs (strategy_id, mode, parameters)
        SELECT id, 'screener', jsonb_build_object('interval', '1d', 'limit', 20)
        FROM strategy_configs WHERE name = 'demo-screener-breakout' RETURNING id;")"
    say "runs: backtest $BACKTEST_RUN_ID (demo-backtest-sma over $MINUTE_SYMBOL 1m)"
    say "runs: screener $SCREENER_RUN_ID (demo-screener-breakout over every active symbol, 1d)"
}

# One line per demo run: name, mode, state, progress, stage, current item, error.
run_lines() {
    db_value "
        SELECT rpad(s.name, 24) || rpad(r.mode, 10) || rpad(r.state, 11)
               || lpad(to_char(r.progress_percent, 'FM990.0'), 6) || '%  '
               || coalesce(r.stage, '') || coalesce(' ' || r.current_item, '')
               || coalesce('  ' || r.error, '')
        FROM strategy_runs r JOIN strategy_configs s ON s.id = r.strategy_id
        WHERE r.id IN ('$BACKTEST_RUN_ID', '$SCREENER_RUN_ID') ORDER BY r.created_at;"
}

# Show the demo runs moving for up to RUN_WAIT seconds (or until both ended).
watch_demo_runs() {
    local deadline=$((SECONDS + RUN_WAIT)) open
    say "runs: progress, once a second (for up to ${RUN_WAIT}s; the runs go on in the background):"
    while :; do
        run_lines | sed 's/^/  /'
        open="$(db_value "SELECT count(*) FROM strategy_runs WHERE id IN ('$BACKTEST_RUN_ID', '$SCREENER_RUN_ID') AND state IN ('queued', 'starting', 'running');")"
        [ "$open" -gt 0 ] || break
        if [ "$SECONDS" -ge "$deadline" ]; then
            say "  (still going: see below how to follow them)"
            break
        fi
        sleep 1
    done
}

print_run_steps() {
    local ctl="$BIN_DIR/enginectl"
    [ "${ctl#"$ROOT"/}" = "$ctl" ] || ctl="${ctl#"$ROOT"/}"
    cat <<EOF

Runs (backtests, screeners, alerts) on the demo's market data:
  $ctl data                      what is loaded: symbols, bars and spans per interval
  $ctl runs                      every run: state, progress, result
  $ctl run-show $BACKTEST_RUN_ID
  redis-cli -u $REDIS_URL SUBSCRIBE ${REDIS_PREFIX}strategy:run:$BACKTEST_RUN_ID
  redis-cli -u $REDIS_URL SUBSCRIBE ${REDIS_PREFIX}strategy:run:$SCREENER_RUN_ID
  redis-cli -u $REDIS_URL SUBSCRIBE ${REDIS_PREFIX}strategy:alerts
The dashboard's runs view shows them too. In SQL:
  SELECT s.name, r.mode, r.state, r.progress_percent, r.stage, r.error
    FROM strategy_runs r JOIN strategy_configs s ON s.id = r.strategy_id ORDER BY r.created_at DESC;
  SELECT result->'ranked_results' FROM strategy_runs WHERE id = '$SCREENER_RUN_ID';
Start another, with a live progress bar and its result as a table:
  $ctl run demo-backtest-sma --mode backtest --set symbols='["$MINUTE_SYMBOL"]' --set interval=1m --set config.fast_period=10
  $ctl run demo-screener-breakout --mode screener --set interval=1d --set config.min_score=50
or as a row, like a command:
  INSERT INTO strategy_runs (strategy_id, mode, parameters)
    SELECT id, 'backtest', '{"symbols": ["$MINUTE_SYMBOL"], "interval": "1m", "config": {"fast_period": 10}}'
    FROM strategy_configs WHERE name = 'demo-backtest-sma';
EOF
}

launch_manager() {
    local prefix_args=()
    [ -z "$REDIS_PREFIX" ] || prefix_args=(--redis-prefix "$REDIS_PREFIX")
    start_background engine-manager "$MANAGER_PID_FILE" "$MANAGER_LOG" \
        "$MANAGER_BIN" --database-url "$DATABASE_URL" --redis-url "$REDIS_URL" \
        "${prefix_args[@]}" --state-dir "$STATE_DIR"
}

cmd_start() {
    mkdir -p "$STATE_DIR"
    bash "$ROOT/ops/ensure-services.sh"

    say "cargo: building release binaries"
    cargo build --release --workspace --bins
    local bin
    for bin in "$MANAGER_BIN" "$SIM_BIN" "$BIN_DIR/strategy-executor" "$BIN_DIR/enginectl"; do
        [ -x "$bin" ] || die "$bin was not built (is it a [[bin]] of the workspace?)"
    done

    # A previous demo's processes: restart them on the new binaries. The executors keep
    # running and the new manager adopts them.
    stop_process "$SIM_PID_FILE" market-sim 10
    stop_process "$MANAGER_PID_FILE" engine-manager 35

    say "database: applying migrations"
    local output
    if ! output="$("$MANAGER_BIN" --migrate-only --database-url "$DATABASE_URL" 2>&1)"; then
        printf '%s\n' "$output" >&2
        die "engine-manager --migrate-only failed (is DATABASE_URL right? $(shown_database_url))"
    fi

    register_demo_strategies
    queue_start_commands

    local prefix_args=()
    [ -z "$REDIS_PREFIX" ] || prefix_args=(--redis-prefix "$REDIS_PREFIX")

    start_background market-sim "$SIM_PID_FILE" "$SIM_LOG" \
        "$SIM_BIN" --redis-url "$REDIS_URL" "${prefix_args[@]}" \
        --tokens BTC-USD,ETH-USD,SOL-USD
    launch_manager

    wait_until_running "$(cat "$MANAGER_PID_FILE")"
    load_market_data
    start_demo_runs
    watch_demo_runs
    say ""
    print_demo_rows
    print_next_steps
    print_run_steps
}

# --- stop --------------------------------------------------------------------------

cmd_stop() {
    local manager_pid command_id deadline status
    if manager_pid="$(live_pid "$MANAGER_PID_FILE" engine-manager)"; then
        command_id="$(db_value "INSERT INTO strategy_commands (strategy_id, command) VALUES (NULL, 'stop') RETURNING id;")"
        say "database: global stop command queued ($command_id)"
        deadline=$((SECONDS + TIMEOUT))
        while :; do
            status="$(db_value "SELECT status FROM strategy_commands WHERE id = '$command_id';")"
            case "$status" in
                executed) say "global stop: executed"; break ;;
                failed)
                    say "global stop: failed: $(db_value "SELECT coalesce(error, '') FROM strategy_commands WHERE id = '$command_id';")" >&2
                    break ;;
            esac
            if [ "$SECONDS" -ge "$deadline" ]; then
                say "global stop: still '$status' after ${TIMEOUT}s; stopping the manager anyway (strategies may keep running)" >&2
                break
            fi
            sleep 0.5
        done
    else
        say "engine-manager: not running (no live pid in $MANAGER_PID_FILE); no stop command sent"
        local left
        left="$(db_value "SELECT name || ' (pid ' || coalesce(pid::text, '?') || ')' FROM strategy_configs WHERE status IN ('running', 'paused', 'starting', 'stopping') ORDER BY name;" 2>/dev/null || true)"
        if [ -n "$left" ]; then
            say "these strategies are recorded as live; their executors may still be running:" >&2
            printf '  %s\n' "$left" >&2
            say "start the engine (bash ops/demo.sh) and run 'bash ops/demo.sh stop' again to stop them" >&2
        fi
    fi
    stop_process "$MANAGER_PID_FILE" engine-manager 35
    stop_process "$SIM_PID_FILE" market-sim 10
}

# --- restart-check -----------------------------------------------------------------

# name|pid|process start time (field 22 of /proc/<pid>/stat) of each demo strategy.
executor_snapshot() {
    local name pid start
    while IFS='|' read -r name pid; do
        start="$(sed -E 's/.*\) //' "/proc/$pid/stat" 2>/dev/null | awk '{print $20}')"
        printf '%s|%s|%s\n' "$name" "$pid" "${start:-gone}"
    done < <(db_value "SELECT name, coalesce(pid, 0) FROM strategy_configs WHERE name IN ($DEMO_NAMES_SQL) ORDER BY name;")
}

# Kill the manager with $1 (KILL or TERM), start a new one, and compare the executors.
restart_and_compare() {
    local signal=$1 manager_pid before after
    manager_pid="$(live_pid "$MANAGER_PID_FILE" engine-manager)" ||
        die "engine-manager is not running: start the demo first (bash ops/demo.sh)"
    before="$(executor_snapshot)"
    say "SIG$signal to engine-manager (pid $manager_pid)"
    kill "-$signal" "$manager_pid"
    local deadline=$((SECONDS + 40))
    while [ -d "/proc/$manager_pid" ] && [ "$(awk '{print $3}' "/proc/$manager_pid/stat" 2>/dev/null)" != "Z" ]; do
        [ "$SECONDS" -lt "$deadline" ] || die "engine-manager (pid $manager_pid) did not exit after SIG$signal"
        sleep 0.1
    done
    launch_manager
    QUEUED_COMMAND_IDS=""
    wait_until_running "$(cat "$MANAGER_PID_FILE")"
    after="$(executor_snapshot)"
    printf '%-18s %-22s %-22s\n' strategy "before (pid@start)" "after (pid@start)"
    local failed=0 name pid start a_name a_pid a_start
    while IFS='|' read -r name pid start && IFS='|' read -r a_name a_pid a_start <&3; do
        printf '%-18s %-22s %-22s\n' "$name" "$pid@$start" "$a_pid@$a_start"
        if [ "$name" != "$a_name" ] || [ "$pid" != "$a_pid" ] || [ "$start" != "$a_start" ] || [ "$start" = gone ]; then
            failed=1
        fi
    done < <(printf '%s\n' "$before") 3< <(printf '%s\n' "$after")
    [ "$failed" -eq 0 ] || die "after SIG$signal to the manager, an executor changed (see the table)"
    grep -q "adopted a running executor" "$MANAGER_LOG" ||
        die "the new manager's log ($MANAGER_LOG) does not say it adopted the executors"
    say "SIG$signal: every demo strategy kept its executor (same pid, same start time), adopted by the new manager"
}

cmd_restart_check() {
    [ -x "$MANAGER_BIN" ] || die "$MANAGER_BIN is missing: start the demo first (bash ops/demo.sh)"
    restart_and_compare KILL
    restart_and_compare TERM
    say "restart-check: passed"
}

# --- status ------------------------------------------------------------------------

cmd_status() {
    local pid
    if pid="$(live_pid "$MANAGER_PID_FILE" engine-manager)"; then say "engine-manager: running (pid $pid)"; else say "engine-manager: not running"; fi
    if pid="$(live_pid "$SIM_PID_FILE" market-sim)"; then say "market-sim: running (pid $pid)"; else say "market-sim: not running"; fi
    print_demo_rows
}

case "${1:-start}" in
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    restart-check) cmd_restart_check ;;
    -h | --help | help) sed -n '2,30p' "$0" | sed 's/^# \{0,1\}//' ;;
    *) die "unknown argument '$1' (use: start, stop, status, restart-check)" ;;
esac
