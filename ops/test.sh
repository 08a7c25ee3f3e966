#!/usr/bin/env bash
# The whole test suite, against the local PostgreSQL and Redis:
#
#   bash ops/test.sh                 build everything, run every test
#   bash ops/test.sh supervisor      only tests whose name contains "supervisor"
#   bash ops/test.sh -- --nocapture  arguments after -- go to the test binaries
#
# Every argument is passed on to `cargo test --workspace`.
#
# Environment (each set only if unset):
#   DATABASE_URL  an admin URL; each test creates its own fresh database through it
#                 (default postgres://postgres@127.0.0.1:5432/postgres)
#   REDIS_URL     default redis://127.0.0.1:6379
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash ops/ensure-services.sh

# Chromium and chromedriver for the dashboard's browser test
# (engine-manager/tests/dashboard.rs); a no-op when both are installed.
if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then
    as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo -n "$@"; fi; }
    echo "apt: installing chromium and chromium-driver for the dashboard browser test"
    if ! { as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null &&
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver >/dev/null; }; then
        echo "warning: could not install chromium and chromium-driver; the dashboard test will fail" >&2
    fi
fi

export DATABASE_URL="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
export REDIS_URL="${REDIS_URL:-redis://127.0.0.1:6379}"

cargo build --workspace --all-targets
cargo test --workspace "$@"
