#!/usr/bin/env bash
# Make sure the local PostgreSQL and Redis that the engine, the demo and the tests
# use are installed, running and reachable over TCP:
#
#   - installs them with apt-get if absent (Debian; `apt-get update` once first);
#   - starts a stopped PostgreSQL cluster / Redis server;
#   - waits, with a deadline, until both answer on 127.0.0.1;
#   - makes sure `psql -h 127.0.0.1 -U postgres` works without a password (a fresh
#     Debian cluster asks for one over TCP): adds two `trust` lines for the loopback
#     addresses at the top of the cluster's pg_hba.conf and reloads.
#
# Idempotent: when everything is already up it changes nothing and only reports.
# Works as root without a TTY (CI); otherwise uses `sudo -n` where it must.
#
# Run it (`bash ops/ensure-services.sh`) or source it; both do the same.
#
# Environment:
#   ENSURE_SERVICES_TIMEOUT  seconds to wait for both services (default 30)
#   ENSURE_SERVICES_SKIP=1   do nothing (you run PostgreSQL and Redis yourself)
#   PG_CLUSTER_VERSION       which /etc/postgresql/<version>/main to start when
#                            several are installed (default: the one on port 5432,
#                            else the newest)
set -euo pipefail

es_pg_host=127.0.0.1
es_pg_port=5432
es_redis_host=127.0.0.1
es_redis_port=6379
es_pg_cluster=main
es_timeout="${ENSURE_SERVICES_TIMEOUT:-30}"
es_apt_updated=0

es_say() { printf '%s\n' "$*"; }
es_die() { printf 'ensure-services: error: %s\n' "$*" >&2; exit 1; }

# Run a command as root: directly if we are root, else through non-interactive sudo.
es_as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo -n "$@"
    else
        es_die "need root to run: $* (run as root or install sudo)"
    fi
}

es_apt_install() {
    command -v apt-get >/dev/null 2>&1 \
        || es_die "apt-get not found: install $* yourself (this script knows Debian/Ubuntu only)"
    if [ "$es_apt_updated" -eq 0 ]; then
        es_say "apt: updating package lists"
        es_as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null
        es_apt_updated=1
    fi
    es_say "apt: installing $*"
    es_as_root env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -q --no-install-recommends "$@" >/dev/null
}

# True if something accepts TCP connections on host:port (no client tools needed).
es_tcp_open() {
    # shellcheck disable=SC2016 # $1 and $2 are the inner shell's arguments
    timeout 2 bash -c 'exec 3<>"/dev/tcp/$1/$2"' _ "$1" "$2" >/dev/null 2>&1
}

es_pg_ready() { pg_isready -q -h "$es_pg_host" -p "$es_pg_port" -t 2 >/dev/null 2>&1; }
es_redis_ready() {
    [ "$(redis-cli -h "$es_redis_host" -p "$es_redis_port" ping 2>/dev/null)" = "PONG" ]
}

# --- installation ----------------------------------------------------------------

es_pg_server_installed() { compgen -G '/usr/lib/postgresql/*/bin/postgres' >/dev/null; }
es_pg_client_works() { psql --version >/dev/null 2>&1 && pg_isready --version >/dev/null 2>&1; }

es_install_packages() {
    local pkgs=()
    if ! es_pg_server_installed && ! es_tcp_open "$es_pg_host" "$es_pg_port"; then
        pkgs+=(postgresql postgresql-client)
    elif ! es_pg_client_works; then
        # A server answers already (or is installed): the client tools are enough.
        pkgs+=(postgresql-client)
    fi
    if ! command -v redis-server >/dev/null 2>&1 && ! es_tcp_open "$es_redis_host" "$es_redis_port"; then
        pkgs+=(redis-server redis-tools)
    elif ! command -v redis-cli >/dev/null 2>&1; then
        pkgs+=(redis-tools)
    fi
    if [ "${#pkgs[@]}" -gt 0 ]; then
        es_apt_install "${pkgs[@]}"
    fi
}

# --- PostgreSQL --------------------------------------------------------------------

# Print the version of the cluster to use (/etc/postgresql/<version>/main), or nothing.
es_pg_cluster_version() {
    if [ -n "${PG_CLUSTER_VERSION:-}" ]; then
        printf '%s\n' "$PG_CLUSTER_VERSION"
        return
    fi
    local versions=() v
    for v in /etc/postgresql/*/"$es_pg_cluster"; do
        [ -d "$v" ] && versions+=("$(basename "$(dirname "$v")")")
    done
    [ "${#versions[@]}" -eq 0 ] && return
    # Prefer the cluster configured for our port; else the newest version.
    for v in "${versions[@]}"; do
        if grep -Eq "^[[:space:]]*port[[:space:]]*=[[:space:]]*${es_pg_port}\b" \
            "/etc/postgresql/$v/$es_pg_cluster/postgresql.conf" 2>/dev/null; then
            printf '%s\n' "$v"
            return
        fi
    done
    printf '%s\n' "${versions[@]}" | sort -V | tail -n 1
}

es_pg_start() {
    if es_pg_ready; then
        es_say "postgres: running"
        return
    fi
    command -v pg_ctlcluster >/dev/null 2>&1 \
        || es_die "postgres is not answering on $es_pg_host:$es_pg_port and pg_ctlcluster is missing (install postgresql-common)"
    local version
    version="$(es_pg_cluster_version)"
    if [ -z "$version" ]; then
        # Installed without a default cluster (e.g. create_main_cluster = false).
        version="$(find /usr/lib/postgresql -mindepth 1 -maxdepth 1 -printf '%f\n' 2>/dev/null | sort -V | tail -n 1)"
        [ -n "$version" ] || es_die "no PostgreSQL server found under /usr/lib/postgresql"
        es_say "postgres: creating cluster $version/$es_pg_cluster on port $es_pg_port"
        es_as_root pg_createcluster --port "$es_pg_port" "$version" "$es_pg_cluster" >/dev/null
    fi
    if pg_lsclusters -h 2>/dev/null | awk -v v="$version" -v c="$es_pg_cluster" '$1 == v && $2 == c && $4 ~ /online/ { found = 1 } END { exit !found }'; then
        es_say "postgres: cluster $version/$es_pg_cluster is online, waiting for it to accept connections"
        return
    fi
    es_say "postgres: starting cluster $version/$es_pg_cluster"
    # pg_ctlcluster exits non-zero when the cluster is already starting; the readiness
    # wait below is the judge.
    es_as_root pg_ctlcluster --skip-systemctl-redirect "$version" "$es_pg_cluster" start \
        || es_say "postgres: pg_ctlcluster returned non-zero; waiting to see if it comes up"
}

# --- Redis -------------------------------------------------------------------------

es_redis_start() {
    if es_redis_ready; then
        es_say "redis: running"
        return
    fi
    es_say "redis: starting"
    es_as_root mkdir -p /var/lib/redis /var/log/redis
    es_as_root redis-server --daemonize yes --bind 127.0.0.1 -::1 --port "$es_redis_port" --save "" \
        --appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log >/dev/null \
        || es_say "redis: redis-server returned non-zero; waiting to see if it comes up"
}

# --- wait --------------------------------------------------------------------------

es_wait_ready() {
    local deadline=$((SECONDS + es_timeout)) pg_ok=0 redis_ok=0
    while :; do
        [ "$pg_ok" -eq 1 ] || { es_pg_ready && pg_ok=1; } || true
        [ "$redis_ok" -eq 1 ] || { es_redis_ready && redis_ok=1; } || true
        if [ "$pg_ok" -eq 1 ] && [ "$redis_ok" -eq 1 ]; then
            return
        fi
        if [ "$SECONDS" -ge "$deadline" ]; then
            local missing=()
            [ "$pg_ok" -eq 1 ] || missing+=("postgres on $es_pg_host:$es_pg_port (log: /var/log/postgresql/)")
            [ "$redis_ok" -eq 1 ] || missing+=("redis on $es_redis_host:$es_redis_port (log: /var/log/redis/ci.log)")
            local IFS=';'
            es_die "not ready after ${es_timeout}s: ${missing[*]}"
        fi
        sleep 0.5
    done
}

# --- TCP trust access for user postgres --------------------------------------------

es_pg_tcp_login() {
    # -w: never prompt for a password (no TTY in CI); fail instead.
    PGCONNECT_TIMEOUT=5 psql -w -X -q -At -h "$es_pg_host" -p "$es_pg_port" -U postgres -d postgres \
        -c 'select 1' >/dev/null 2>"${1:-/dev/null}"
}

# Run one SQL statement as the postgres OS user over the local socket (peer auth).
es_pg_local_sql() {
    es_as_root runuser -u postgres -- psql -w -X -q -At -p "$es_pg_port" -d postgres -c "$1"
}

es_pg_ensure_trust() {
    if es_pg_tcp_login; then
        es_say "postgres: tcp login as postgres ok"
        return
    fi
    local version hba err
    version="$(es_pg_cluster_version)"
    hba="/etc/postgresql/$version/$es_pg_cluster/pg_hba.conf"
    if [ -z "$version" ] || ! es_as_root test -f "$hba"; then
        # Not Debian's layout: ask the server over its local socket.
        version=""
        hba="$(es_pg_local_sql 'show hba_file' 2>/dev/null || true)"
    fi
    if [ -z "$hba" ] || ! es_as_root test -f "$hba"; then
        es_pg_tcp_login /dev/stderr || true
        es_die "cannot log in as postgres on $es_pg_host:$es_pg_port and found no pg_hba.conf to fix (looked for /etc/postgresql/<version>/$es_pg_cluster/pg_hba.conf and asked the server)"
    fi
    local lines=() line
    for line in "host all all 127.0.0.1/32 trust" "host all all ::1/128 trust"; do
        # Present already (any spacing)? Then leave it.
        local pattern
        pattern="^[[:space:]]*$(printf '%s' "$line" | sed -e 's/[.\/]/\\&/g' -e 's/ /[[:space:]]+/g')[[:space:]]*$"
        if ! es_as_root grep -Eq "$pattern" "$hba"; then
            lines+=("$line")
        fi
    done
    if [ "${#lines[@]}" -gt 0 ]; then
        local tmp
        tmp="$(mktemp)"
        {
            printf '# added by ops/ensure-services.sh: passwordless TCP login on loopback\n'
            printf '%s\n' "${lines[@]}"
            es_as_root cat "$hba"
        } >"$tmp"
        es_as_root cp -p "$hba" "$hba.before-ensure-services"
        # cat into the existing file keeps its owner and mode.
        es_as_root tee "$hba" <"$tmp" >/dev/null
        rm -f "$tmp"
        es_say "postgres: added to the top of $hba (backup: $hba.before-ensure-services):"
        printf '  %s\n' "${lines[@]}"
    else
        es_say "postgres: trust lines already in $hba"
    fi
    if [ -n "$version" ]; then
        es_say "postgres: reloading cluster $version/$es_pg_cluster"
        es_as_root pg_ctlcluster --skip-systemctl-redirect "$version" "$es_pg_cluster" reload
    else
        es_say "postgres: reloading configuration"
        es_pg_local_sql 'select pg_reload_conf()' >/dev/null
    fi
    # The reload is asynchronous: give it a moment.
    local deadline=$((SECONDS + 10))
    until es_pg_tcp_login; do
        if [ "$SECONDS" -ge "$deadline" ]; then
            err="$(mktemp)"
            es_pg_tcp_login "$err" || true
            es_die "still cannot log in as postgres on $es_pg_host:$es_pg_port after editing $hba: $(cat "$err")"
        fi
        sleep 0.5
    done
    es_say "postgres: tcp login as postgres ok"
}

ensure_services() {
    if [ "${ENSURE_SERVICES_SKIP:-0}" = "1" ]; then
        es_say "ensure-services: skipped (ENSURE_SERVICES_SKIP=1)"
        return
    fi
    es_install_packages
    es_pg_start
    es_redis_start
    es_wait_ready
    es_pg_ensure_trust
    es_say "redis: ping ok"
}

ensure_services
