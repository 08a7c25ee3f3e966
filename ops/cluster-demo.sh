#!/usr/bin/env bash
# Three engine-manager nodes of one cluster on this machine (CONTRACT.md §7), with
# nine demo strategies trading on simulated market data.
#
#   bash ops/cluster-demo.sh                 build, start market-sim and three nodes
#                                            (node-1, node-2, node-3, each with its own
#                                            state directory and HTTP port), register
#                                            the demo strategies, wait until each runs
#                                            on exactly one node, and say how to kill a
#                                            node and watch its strategies move
#   bash ops/cluster-demo.sh status          nodes, strategies and their owners
#   bash ops/cluster-demo.sh failover-check  with the cluster up: kill the node that
#                                            owns the most strategies as a host dies
#                                            (its manager and executors, SIGKILL),
#                                            check that each of its strategies runs on
#                                            another node within 15 s of its last
#                                            heartbeat, never two executors of one
#                                            strategy at once, one `failover` event
#                                            each; then start the node again
#   bash ops/cluster-demo.sh stop            stop every node and market-sim (the
#                                            executors stop at their lease deadline)
#
# Environment:
#   DATABASE_URL    default postgres://postgres@127.0.0.1:5432/strategy_engine_cluster
#                   (its own database: a cluster and a manager without --cluster
#                   never share one)
#   REDIS_URL       default redis://127.0.0.1:6379
#   CLUSTER_PREFIX  Redis prefix of the demo's channels (default cluster-demo:)
#   CLUSTER_DIR     default ./engine-state-cluster: one state directory per node
#   CLUSTER_LEASE   each node's --lease-time (default 10s)
#   CLUSTER_PORT    node-1's HTTP port; node-2 and node-3 take the next two (8091)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

export DATABASE_URL="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/strategy_engine_cluster}"
export REDIS_URL="${REDIS_URL:-redis://127.0.0.1:6379}"
PREFIX="${CLUSTER_PREFIX:-cluster-demo:}"
DIR="${CLUSTER_DIR:-$ROOT/engine-state-cluster}"
LEASE="${CLUSTER_LEASE:-10s}"
PORT="${CLUSTER_PORT:-8091}"
BIN_DIR="${CARGO_TARGET_DIR:-$ROOT/target}/release"
NODES=(node-1 node-2 node-3)
TIMEOUT=60

say() { printf '%s\n' "$*"; }
die() { printf 'cluster-demo: error: %s\n' "$*" >&2; exit 1; }
db() { psql "$DATABASE_URL" -X -w -q -v ON_ERROR_STOP=1 -P pager=off "$@"; }
db_value() { db -At -c "$1"; }
ctl() { "$BIN_DIR/enginectl" --database-url "$DATABASE_URL" --redis-prefix "$PREFIX" "$@"; }

node_dir() { printf '%s/%s' "$DIR" "$1"; }
node_port() {
    local i
    for i in "${!NODES[@]}"; do
        [ "${NODES[$i]}" = "$1" ] && { printf '%s' $((PORT + i)); return; }
    done
}

# The pid of node $1's manager if it runs (its pid file, checked against /proc).
node_pid() {
    local file pid
    file="$(node_dir "$1")/engine-manager.pid"
    [ -f "$file" ] || return 1
    pid="$(cat "$file")"
    [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "engine-manager" ] || return 1
    printf '%s' "$pid"
}

# Pids of the executors of node $1 (their command line names its control socket).
node_executors() {
    local socket pid
    socket="$(node_dir "$1")/control.sock"
    for pid in $(pgrep -f -- "--control-socket $socket" || true); do
        [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "strategy-execut" ] && printf '%s\n' "$pid"
    done
    return 0
}

start_node() {
    local node=$1 dir
    dir="$(node_dir "$node")"
    mkdir -p "$dir"
    [ -f "$dir/engine-manager.log" ] && mv -f "$dir/engine-manager.log" "$dir/engine-manager.log.$(date -u +%Y%m%dT%H%M%S.%NZ)"
    setsid nohup "$BIN_DIR/engine-manager" --cluster --node "$node" --lease-time "$LEASE" \
        --database-url "$DATABASE_URL" --redis-url "$REDIS_URL" --redis-prefix "$PREFIX" \
        --state-dir "$dir" --http-addr "127.0.0.1:$(node_port "$node")" \
        >"$dir/engine-manager.log" 2>&1 </dev/null &
    printf '%s\n' "$!" >"$dir/engine-manager.pid"
    say "$node: started (pid $!, http://127.0.0.1:$(node_port "$node")/, log $dir/engine-manager.log)"
}

register_strategies() {
    db <<'SQL'
INSERT INTO strategy_configs (name, strategy_type, config, auto_start)
SELECT 'cluster-' || v.kind || '-' || lower(split_part(t.token, '-', 1)), v.strategy_type,
       v.config || jsonb_build_object('token', t.token), true
FROM (VALUES ('BTC-USD'), ('ETH-USD'), ('SOL-USD')) AS t(token),
     (VALUES ('sma-fast', 'sma_crossover', '{"fast_period": 5, "slow_period": 20, "order_qty": 1.0}'::jsonb),
             ('sma-slow', 'sma_crossover', '{"fast_period": 10, "slow_period": 40, "order_qty": 1.0}'::jsonb),
             ('meanrev', 'mean_reversion', '{"window": 20, "entry_z": 2.0, "exit_z": 0.5, "order_qty": 1.0}'::jsonb))
         AS v(kind, strategy_type, config)
ON CONFLICT (name) DO NOTHING;
-- Stopped by an earlier `stop`: start them again.
INSERT INTO strategy_commands (strategy_id, command)
SELECT id, 'start' FROM strategy_configs
WHERE name LIKE 'cluster-%' AND (operator_stopped OR status = 'error');
SQL
}

# Wait until the three nodes beat.
wait_nodes_alive() {
    local deadline=$((SECONDS + TIMEOUT)) alive
    while :; do
        alive="$(db_value "SELECT count(*) FROM engine_nodes WHERE node IN ('node-1', 'node-2', 'node-3') AND heartbeat_at > now() - lease_ms * interval '1 millisecond' AND pid IN ($(for n in "${NODES[@]}"; do node_pid "$n" || printf 0; printf ','; done)0)")"
        [ "$alive" = 3 ] && return 0
        [ $SECONDS -lt $deadline ] || die "only $alive of 3 nodes up after ${TIMEOUT}s (see $DIR/*/engine-manager.log)"
        sleep 0.2
    done
}

# Wait until every demo strategy is running with a live executor.
wait_all_running() {
    local deadline=$((SECONDS + TIMEOUT)) want running
    want="$(db_value "SELECT count(*) FROM strategy_configs WHERE name LIKE 'cluster-%'")"
    while :; do
        running="$(db_value "SELECT count(*) FROM strategy_configs WHERE name LIKE 'cluster-%' AND status = 'running' AND node IS NOT NULL")"
        [ "$running" = "$want" ] && { say "all $want demo strategies are running"; return 0; }
        [ $SECONDS -lt $deadline ] || die "only $running of $want strategies running after ${TIMEOUT}s (see $DIR/*/engine-manager.log)"
        sleep 0.5
    done
}

cmd_start() {
    bash "$ROOT/ops/ensure-services.sh"
    say "cargo: building release binaries"
    cargo build --release --workspace --bins
    cmd_stop quiet
    mkdir -p "$DIR"
    say "database: $DATABASE_URL (migrations applied by the first node)"
    "$BIN_DIR/engine-manager" --migrate-only --database-url "$DATABASE_URL" >/dev/null
    if ! pgrep -f -- "market-sim.*--redis-prefix $PREFIX" >/dev/null; then
        setsid nohup "$BIN_DIR/market-sim" --redis-url "$REDIS_URL" --redis-prefix "$PREFIX" \
            --tokens BTC-USD,ETH-USD,SOL-USD >"$DIR/market-sim.log" 2>&1 </dev/null &
        printf '%s\n' "$!" >"$DIR/market-sim.pid"
        say "market-sim: started (pid $!)"
    fi
    local node
    for node in "${NODES[@]}"; do
        start_node "$node"
    done
    # Registered once every node is up, so that the first node does not take them all
    # (a node claims its share of what needs an owner among the live nodes).
    wait_nodes_alive
    register_strategies
    wait_all_running
    cmd_status
    cat <<EOF

Kill a node and watch its strategies move (within ${LEASE} plus a second or so):
  watch -n 0.5 '$BIN_DIR/enginectl --database-url $DATABASE_URL --redis-prefix $PREFIX list'
  kill -KILL \$(cat $DIR/node-2/engine-manager.pid)      # the manager alone: its
        # executors stop trading at their lease deadline, then node-1/node-3 start them
  bash ops/cluster-demo.sh failover-check              # the same as a host dying, checked
  psql $DATABASE_URL -c "SELECT at, strategy_id, node, error FROM strategy_events WHERE reason = 'failover' ORDER BY at DESC LIMIT 10"
  bash ops/cluster-demo.sh stop
EOF
}

cmd_status() {
    ctl nodes || true
    say ""
    db -c "SELECT name, node, lease_epoch, status, pid FROM strategy_configs WHERE name LIKE 'cluster-%' ORDER BY node, name;"
}

# Every demo strategy's executors on any node: "strategy_id pid" lines.
all_executors() {
    local node pid id
    for node in "${NODES[@]}"; do
        for pid in $(node_executors "$node"); do
            id="$(tr '\0' '\n' <"/proc/$pid/cmdline" 2>/dev/null | grep -A1 -x -- '--strategy-id' | tail -1)"
            [ -n "$id" ] && printf '%s %s\n' "$id" "$pid"
        done
    done
    return 0
}

cmd_failover_check() {
    local victim last owned deadline doubles samples=0 moved
    victim="$(db_value "SELECT node FROM strategy_configs WHERE name LIKE 'cluster-%' AND node IS NOT NULL GROUP BY node ORDER BY count(*) DESC, node LIMIT 1")"
    [ -n "$victim" ] || die "no node owns a demo strategy: is the cluster up? (bash ops/cluster-demo.sh)"
    node_pid "$victim" >/dev/null || die "$victim's manager is not running"
    owned="$(db_value "SELECT count(*) FROM strategy_configs WHERE name LIKE 'cluster-%' AND node = '$victim'")"
    local ids
    ids="$(db_value "SELECT string_agg(quote_literal(id::text), ',') FROM strategy_configs WHERE name LIKE 'cluster-%' AND node = '$victim'")"
    say "failover-check: $victim owns $owned strategies; killing it as a host dies (manager and executors)"
    kill -KILL "$(node_pid "$victim")" $(node_executors "$victim") 2>/dev/null || true
    last="$(db_value "SELECT extract(epoch FROM heartbeat_at) FROM engine_nodes WHERE node = '$victim'")"
    deadline=$((SECONDS + 45))
    doubles=0
    while :; do
        # Never two executors of one strategy, on any node.
        local dup
        dup="$(all_executors | awk '{print $1}' | sort | uniq -d)"
        [ -z "$dup" ] || { doubles=$((doubles + 1)); say "two executors at once: $dup"; }
        samples=$((samples + 1))
        moved="$(db_value "SELECT count(*) FROM strategy_configs WHERE id::text IN ($ids) AND node <> '$victim' AND status = 'running'")"
        [ "$moved" = "$owned" ] && break
        [ $SECONDS -lt $deadline ] || die "only $moved of $owned strategies running elsewhere after 45 s"
        sleep 0.1
    done
    say "all $owned strategies of $victim run elsewhere ($samples samples of /proc, $doubles with two executors of one strategy)"
    db -c "SELECT name, node, lease_epoch, round((extract(epoch FROM started_at) - $last)::numeric, 2) AS s_after_last_heartbeat
           FROM strategy_configs WHERE id::text IN ($ids) ORDER BY name;"
    local slow events
    slow="$(db_value "SELECT count(*) FROM strategy_configs WHERE id::text IN ($ids) AND extract(epoch FROM started_at) - $last > 15")"
    events="$(db_value "SELECT count(DISTINCT strategy_id) FROM strategy_events WHERE strategy_id::text IN ($ids) AND reason = 'failover' AND extract(epoch FROM at) > $last")"
    local ok=1
    [ "$doubles" = 0 ] || { say "FAIL: two executors of one strategy were seen"; ok=0; }
    [ "$slow" = 0 ] || { say "FAIL: $slow strategies took longer than 15 s"; ok=0; }
    [ "$events" = "$owned" ] || { say "FAIL: $events failover events for $owned strategies"; ok=0; }
    say "failover-check: starting $victim again"
    start_node "$victim"
    [ "$ok" = 1 ] || die "failover-check failed"
    say "failover-check: OK"
}

cmd_stop() {
    local node pid
    for node in "${NODES[@]}"; do
        if pid="$(node_pid "$node")"; then
            kill -TERM "$pid" 2>/dev/null || true
            [ "${1:-}" = quiet ] || say "$node: stopping (pid $pid)"
        fi
    done
    for node in "${NODES[@]}"; do
        local deadline=$((SECONDS + 35))
        while node_pid "$node" >/dev/null && [ $SECONDS -lt $deadline ]; do sleep 0.2; done
        # Without their manager the executors would stop at their lease deadline; a
        # stop of the demo does not wait for that.
        for pid in $(node_executors "$node"); do kill -TERM "$pid" 2>/dev/null || true; done
    done
    if [ -f "$DIR/market-sim.pid" ] && [ "$(cat "/proc/$(cat "$DIR/market-sim.pid")/comm" 2>/dev/null)" = "market-sim" ]; then
        kill -TERM "$(cat "$DIR/market-sim.pid")" 2>/dev/null || true
    fi
    [ "${1:-}" = quiet ] || say "cluster demo stopped"
}

case "${1:-start}" in
    start) cmd_start ;;
    status) cmd_status ;;
    failover-check) cmd_failover_check ;;
    stop) cmd_stop ;;
    *) die "unknown command '$1' (start, status, failover-check, stop)" ;;
esac
