#!/usr/bin/env bash
# Runs every movewatch test: formatting, lints, the Rust test suites (which use
# Mosquitto on 127.0.0.1:1883 and PostgreSQL on 127.0.0.1:5432), the RabbitMQ
# cluster test (three nodes of its own), and the browser test of the fleet
# page against `movewatch demo`.
#
#   bash scripts/test.sh            # everything that runs in CI
#   bash scripts/test.sh --soak     # ... then the soak (MOVEWATCH_SOAK_SECS, default 600)
#
# On a fresh Debian 12 machine (as root) it installs and starts what is
# missing with apt-get; anything already present is left alone.
set -euo pipefail

SOAK=0
for arg in "$@"; do
  case "$arg" in
    --soak) SOAK=1 ;;
    *) printf 'usage: bash scripts/test.sh [--soak]\n' >&2; exit 2 ;;
  esac
done

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"

START=$SECONDS
step() { printf '\n==> %s\n' "$*"; }
info() { printf '    %s\n' "$*"; }
die() { printf '\nERROR: %s\n' "$*" >&2; exit 1; }

# Root runs apt-get directly; anyone else goes through sudo if there is one.
if [ "$(id -u)" -eq 0 ]; then
  SUDO=()
elif command -v sudo >/dev/null 2>&1; then
  SUDO=(sudo)
else
  SUDO=()
fi
as_root() { "${SUDO[@]}" "$@"; }

export DEBIAN_FRONTEND=noninteractive
export PATH="$PATH:/usr/sbin:/sbin:$HOME/.cargo/bin"

APT_UPDATED=0
apt_install() {
  command -v apt-get >/dev/null 2>&1 || die "apt-get not found; install these by hand: $*"
  # Another apt may be running (e.g. a background install): wait for its lock.
  if [ "$APT_UPDATED" -eq 0 ]; then
    info "apt-get update"
    local tries=0
    # apt-get update takes the lists lock, which the timeout may not cover.
    until as_root apt-get -o DPkg::Lock::Timeout=600 -qq update; do
      tries=$((tries + 1))
      [ "$tries" -lt 30 ] || die "apt-get update keeps failing"
      info "apt-get update failed (another apt running?); retrying in 10 s"
      sleep 10
    done
    APT_UPDATED=1
  fi
  info "apt-get install $*"
  as_root apt-get -o DPkg::Lock::Timeout=600 -y -qq install "$@" >/dev/null
}

# True when the dpkg package is fully installed (or dpkg is not used here).
pkg_ok() {
  command -v dpkg-query >/dev/null 2>&1 || return 0
  [ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null)" = "install ok installed" ]
}

port_open() {
  timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" >/dev/null 2>&1
}

wait_for() { # wait_for SECONDS DESCRIPTION COMMAND...
  local limit=$1 what=$2
  shift 2
  local deadline=$((SECONDS + limit))
  until "$@"; do
    [ "$SECONDS" -lt "$deadline" ] || die "$what did not come up within ${limit}s"
    sleep 0.5
  done
}

# ---------------------------------------------------------------------------
step "Mosquitto on 127.0.0.1:1883"
if port_open 1883; then
  info "already listening"
else
  if ! command -v mosquitto >/dev/null 2>&1; then
    apt_install mosquitto
  fi
  conf=/etc/mosquitto/mosquitto.conf
  if ! cat "$conf" /etc/mosquitto/conf.d/*.conf 2>/dev/null | grep -Eq '^[[:space:]]*listener[[:space:]]'; then
    info "adding a listener on 127.0.0.1:1883 (/etc/mosquitto/conf.d/movewatch.conf)"
    as_root mkdir -p /etc/mosquitto/conf.d
    printf 'listener 1883 127.0.0.1\nallow_anonymous true\n' | as_root tee /etc/mosquitto/conf.d/movewatch.conf >/dev/null
    if ! grep -Eq '^[[:space:]]*include_dir[[:space:]]+/etc/mosquitto/conf.d' "$conf" 2>/dev/null; then
      echo 'include_dir /etc/mosquitto/conf.d' | as_root tee -a "$conf" >/dev/null
    fi
  fi
  # Without systemd nothing creates the pid file's directory.
  as_root mkdir -p /run/mosquitto /var/lib/mosquitto /var/log/mosquitto
  if id mosquitto >/dev/null 2>&1; then
    as_root chown mosquitto: /run/mosquitto /var/lib/mosquitto /var/log/mosquitto
  fi
  info "starting mosquitto"
  as_root mosquitto -d -c "$conf"
  wait_for 30 "Mosquitto on 127.0.0.1:1883" port_open 1883
  info "listening"
fi

# ---------------------------------------------------------------------------
step "A device that is not ours: Eclipse Paho (python3-paho-mqtt)"
# movewatch/tests/embedded_acks.rs drives the embedded broker with a real
# MQTT client other than the engine's own library.
if [ -x /usr/bin/python3 ] && /usr/bin/python3 -c 'import paho.mqtt.client' >/dev/null 2>&1; then
  info "paho $(/usr/bin/python3 -c 'import paho.mqtt; print(paho.mqtt.__version__)')"
else
  apt_install python3 python3-paho-mqtt
fi

# ---------------------------------------------------------------------------
step "PostgreSQL on 127.0.0.1:5432 (user postgres, trust)"
pg_ready() {
  PGCONNECT_TIMEOUT=3 psql -h 127.0.0.1 -p 5432 -U postgres -w -X -q -t -c 'select 1' >/dev/null 2>&1
}
if command -v psql >/dev/null 2>&1 && pg_ready; then
  info "already answering"
else
  if ! command -v pg_ctlcluster >/dev/null 2>&1 || ! ls /etc/postgresql/*/main >/dev/null 2>&1 \
    || ! command -v psql >/dev/null 2>&1; then
    apt_install postgresql
  fi
  ver="$(find /etc/postgresql -mindepth 1 -maxdepth 1 -type d -printf '%f\n' | sort -V | tail -n 1)"
  [ -n "$ver" ] || die "no PostgreSQL version under /etc/postgresql"
  if [ ! -d "/etc/postgresql/$ver/main" ]; then
    info "creating cluster $ver/main"
    as_root pg_createcluster "$ver" main >/dev/null
  fi
  hba="/etc/postgresql/$ver/main/pg_hba.conf"
  if ! as_root grep -Eq '^[[:space:]]*host[[:space:]]+all[[:space:]]+all[[:space:]]+127\.0\.0\.1/32[[:space:]]+trust' "$hba" \
    || ! as_root grep -Eq '^[[:space:]]*local[[:space:]]+all[[:space:]]+all[[:space:]]+trust' "$hba"; then
    info "setting trust for local and 127.0.0.1 in $hba"
    tmp="$(mktemp)"
    {
      echo '# movewatch tests: trust local connections (scripts/test.sh)'
      echo 'local   all   all                  trust'
      echo 'host    all   all   127.0.0.1/32   trust'
      echo 'host    all   all   ::1/128        trust'
      as_root cat "$hba"
    } >"$tmp"
    as_root cp "$tmp" "$hba"
    rm -f "$tmp"
    as_root chown postgres: "$hba" 2>/dev/null || true
  fi
  as_root mkdir -p /var/run/postgresql
  as_root chown postgres: /var/run/postgresql 2>/dev/null || true
  if pg_lsclusters --no-header 2>/dev/null | awk -v v="$ver" '$1 == v && $2 == "main" { print $4 }' | grep -q online; then
    info "reloading cluster $ver/main"
    as_root pg_ctlcluster --skip-systemctl-redirect "$ver" main reload
  else
    info "starting cluster $ver/main"
    as_root pg_ctlcluster --skip-systemctl-redirect "$ver" main start
  fi
  wait_for 60 "PostgreSQL on 127.0.0.1:5432" pg_ready
  info "answering"
fi

# ---------------------------------------------------------------------------
step "Chromium, Node.js and the browser test's npm packages"
if [ -x /usr/bin/chromium ] && pkg_ok chromium; then
  info "chromium: $(/usr/bin/chromium --version 2>/dev/null | tail -n 1)"
else
  # Waits for the dpkg lock if chromium is being installed right now.
  apt_install chromium fonts-liberation
  [ -x /usr/bin/chromium ] || die "/usr/bin/chromium missing after installing chromium"
fi
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  missing=()
  command -v node >/dev/null 2>&1 || missing+=(nodejs)
  command -v npm >/dev/null 2>&1 || missing+=(npm)
  apt_install "${missing[@]}"
fi
node_major="$(node -p 'process.versions.node.split(".")[0]')"
[ "$node_major" -ge 18 ] || die "Node.js $(node --version) is too old; 18 or later is needed"
info "node $(node --version), npm $(npm --version 2>/dev/null)"
# Every package the lockfile pins, at its version (playwright-core, axe-core).
packages_match() {
  node -e '
    const lock = require("./web/tests/package-lock.json").packages;
    for (const [where, p] of Object.entries(lock)) {
      if (!where.startsWith("node_modules/") || where.split("node_modules/").length > 2) continue;
      let have = "";
      try { have = require("./web/tests/" + where + "/package.json").version; } catch {}
      if (have !== p.version) process.exit(1);
    }'
}
if packages_match; then
  info "web test packages already installed (playwright-core, axe-core)"
else
  info "npm ci (playwright-core, axe-core; no browser is downloaded)"
  PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --prefix web/tests --no-audit --no-fund --loglevel=error >/dev/null
fi

# ---------------------------------------------------------------------------
step "Rust toolchain"
# The machine provides the Rust toolchain (rustup's stable with rustfmt and
# clippy); Debian's own rustc is too old for edition 2024.
command -v cargo >/dev/null 2>&1 || die "cargo is missing: install the Rust toolchain (rustup, stable, with rustfmt and clippy)"
if ! command -v cc >/dev/null 2>&1; then
  apt_install build-essential pkg-config
fi
for component in rustfmt clippy; do
  if ! cargo "${component/rustfmt/fmt}" --version >/dev/null 2>&1; then
    command -v rustup >/dev/null 2>&1 || die "cargo ${component/rustfmt/fmt} is missing and there is no rustup to add it"
    info "rustup component add $component"
    rustup component add "$component" >/dev/null
  fi
done
info "$(cargo --version)"

# ---------------------------------------------------------------------------
step "cargo fmt --all --check"
cargo fmt --all --check

step "cargo clippy --workspace --all-targets -- -D warnings"
cargo clippy --workspace --all-targets --quiet -- -D warnings

if cargo nextest --version >/dev/null 2>&1; then
  step "cargo nextest run --workspace"
  cargo nextest run --workspace
  step "cargo test --workspace --doc"
  cargo test --workspace --doc
else
  step "cargo test --workspace"
  cargo test --workspace
fi

# ---------------------------------------------------------------------------
# Three RabbitMQ nodes of the test's own (scripts/cluster.sh on spare ports in
# a temp dir): topology, ordering, supplier rights, single active consumer,
# the quorum surviving its leader (docs/SCALE-OUT.md). About a minute, most
# of it starting the nodes. Then the engine nodes on a cluster of their own:
# two `movewatch serve` nodes on PostgreSQL through an engine SIGKILL, a
# rolling restart, a change of vehicle from a van of one node's to one of the
# other's, and a broker SIGKILL under load (about four minutes; every
# scenario unless MOVEWATCH_FAILOVER_SCENARIOS names some), and
# `movewatch demo --cluster` (about a minute). MOVEWATCH_CLUSTER_TESTS=0
# skips them.
if [ "${MOVEWATCH_CLUSTER_TESTS:-1}" != "0" ]; then
  step "RabbitMQ cluster test (three local nodes)"
  if [ ! -x /usr/lib/rabbitmq/bin/rabbitmq-server ]; then
    apt_install rabbitmq-server
  fi
  MOVEWATCH_CLUSTER_TESTS=1 cargo test -p movewatch-ingest --test cluster -- --nocapture
  step "Failover on the cluster: engine SIGKILL, rolling restart, change of vehicle across nodes, broker SIGKILL (two engine nodes, three RabbitMQ nodes, PostgreSQL)"
  MOVEWATCH_CLUSTER_TESTS=1 cargo test -p movewatch --test cluster_failover -- --nocapture
  step "movewatch demo --cluster (two engine nodes on a cluster of the test's own)"
  MOVEWATCH_CLUSTER_TESTS=1 cargo test -p movewatch --test demo_cluster -- --nocapture
fi

# ---------------------------------------------------------------------------
step "cargo build -p movewatch"
cargo build -p movewatch --quiet
export MOVEWATCH_BIN="${MOVEWATCH_BIN:-${CARGO_TARGET_DIR:-$REPO/target}/debug/movewatch}"
[ -x "$MOVEWATCH_BIN" ] || die "$MOVEWATCH_BIN was not built"

step "node --test web/tests/ (control room and incoming board in Chromium)"
node --test web/tests/

# ---------------------------------------------------------------------------
# A short coverage-guided pass over every untrusted input (docs/FUZZING.md);
# MOVEWATCH_FUZZ_SECONDS=0 skips it, a larger value fuzzes longer.
FUZZ_SECONDS="${MOVEWATCH_FUZZ_SECONDS:-15}"
if [ "$FUZZ_SECONDS" -gt 0 ]; then
  step "fuzz smoke: scripts/fuzz.sh all $FUZZ_SECONDS"
  bash scripts/fuzz.sh all "$FUZZ_SECONDS"
fi

# ---------------------------------------------------------------------------
# The soak (docs/RELIABILITY.md): engine kills and broker restarts in turn
# under a steady stream, for MOVEWATCH_SOAK_SECS (default 600).
if [ "$SOAK" -eq 1 ]; then
  step "soak: ${MOVEWATCH_SOAK_SECS:-600} s of engine kills and Mosquitto restarts"
  cargo nextest run -p movewatch --run-ignored only --no-capture -E 'test(soak)'
fi

# ---------------------------------------------------------------------------
elapsed=$((SECONDS - START))
printf '\n==> All tests passed: fmt, clippy, Rust tests, browser tests, fuzz smoke (%dm%02ds). Screenshots: artifacts/\n' \
  $((elapsed / 60)) $((elapsed % 60))
