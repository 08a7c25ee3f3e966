#!/usr/bin/env bash
# Install the engine as systemd services on this host (Debian/Ubuntu with systemd).
#
#   bash ops/install-systemd.sh                    build, install, enable and start
#                                                  engine-manager
#   bash ops/install-systemd.sh --with-market-sim  also the simulated market feed (demo)
#   bash ops/install-systemd.sh --no-build         install what target/release holds
#
# Run it as your usual user; it uses sudo for the system changes. Running it as root
# also works. What it does:
#   1. cargo build --release --workspace --bins       (as you, not root)
#   2. a system user and group 'strategy-engine'
#   3. /opt/strategy-engine/bin/{engine-manager,strategy-executor,market-sim}
#      /opt/strategy-engine/README.md
#      /var/lib/strategy-engine             (working and state directory, owned by the user)
#      /etc/strategy-engine/engine.env      (from ops/systemd/engine.env.example,
#                                            only if absent; edit it afterwards)
#      /etc/systemd/system/engine-manager.service, market-sim.service
#   4. systemctl daemon-reload && systemctl enable --now engine-manager
#      When the manager was already running (an upgrade), it is restarted on the new
#      binary. Running strategies are NOT stopped: the new manager adopts them, and
#      they keep running the old executor binary until they are restarted
#      (a 'restart' command).
#
# Re-running it is safe: that is how you upgrade. PostgreSQL and Redis must be
# reachable at the URLs in engine.env (bash ops/ensure-services.sh sets up local ones).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

with_market_sim=0
build=1
for arg in "$@"; do
    case "$arg" in
        --with-market-sim) with_market_sim=1 ;;
        --no-build) build=0 ;;
        -h | --help) sed -n '2,28p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "install-systemd: unknown argument '$arg' (see --help)" >&2; exit 2 ;;
    esac
done

say() { printf '%s\n' "$*"; }
die() { printf 'install-systemd: error: %s\n' "$*" >&2; exit 1; }
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

command -v systemctl >/dev/null 2>&1 || die "systemctl not found: this host does not run systemd"
[ -d /run/systemd/system ] || die "systemd is not running on this host (no /run/systemd/system)"

user=strategy-engine
prefix=/opt/strategy-engine
state=/var/lib/strategy-engine
etc=/etc/strategy-engine
bin_dir="${CARGO_TARGET_DIR:-target}/release"
binaries=(engine-manager strategy-executor market-sim)

if [ "$build" -eq 1 ]; then
    say "build: cargo build --release --workspace --bins"
    cargo build --release --workspace --bins
fi
for b in "${binaries[@]}"; do
    [ -x "$bin_dir/$b" ] || die "$bin_dir/$b not found (build first, or drop --no-build)"
done

if ! id "$user" >/dev/null 2>&1; then
    say "user: creating system user $user"
    as_root useradd --system --user-group --home-dir "$state" --no-create-home \
        --shell /usr/sbin/nologin "$user"
fi

say "files: $prefix/bin, $state, $etc"
as_root install -d -m 0755 "$prefix" "$prefix/bin" "$etc"
as_root install -d -m 0750 -o "$user" -g "$user" "$state"
# install(1) replaces the file instead of writing into it: running executors keep
# their old binary, and the running manager never sees a half-written file.
for b in "${binaries[@]}"; do
    as_root install -m 0755 "$bin_dir/$b" "$prefix/bin/$b"
done
as_root install -m 0644 README.md "$prefix/README.md"

if as_root test -f "$etc/engine.env"; then
    say "config: keeping existing $etc/engine.env (compare with ops/systemd/engine.env.example)"
else
    say "config: installing $etc/engine.env"
    as_root install -m 0640 -o root -g "$user" ops/systemd/engine.env.example "$etc/engine.env"
fi

say "systemd: installing units"
as_root install -m 0644 ops/systemd/engine-manager.service /etc/systemd/system/engine-manager.service
as_root install -m 0644 ops/systemd/market-sim.service /etc/systemd/system/market-sim.service
as_root systemctl daemon-reload

units=(engine-manager)
[ "$with_market_sim" -eq 0 ] || units+=(market-sim)
for unit in "${units[@]}"; do
    if systemctl is-active --quiet "$unit"; then
        say "systemd: restarting $unit on the new binary"
        as_root systemctl enable "$unit"
        as_root systemctl restart "$unit"
    else
        say "systemd: enabling and starting $unit"
        as_root systemctl enable --now "$unit"
    fi
done

systemctl --no-pager --lines=5 status "${units[@]}" || true
say ""
say "done. Logs: journalctl -u engine-manager -f    Settings: $etc/engine.env"
