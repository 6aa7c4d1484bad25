#!/usr/bin/env bash
# A three-node RabbitMQ cluster on this machine, for scale-out development and
# the cluster tests (docs/SCALE-OUT.md). Uses the installed RabbitMQ (Debian's
# 3.10) with the MQTT and consistent-hash-exchange plugins; each node has its
# own ports, data, logs and Erlang cookie under one directory, and nothing of
# the system's own RabbitMQ node (5672) is touched.
#
#   bash scripts/cluster.sh up       # start (or resume) and join the three nodes
#   bash scripts/cluster.sh status   # which nodes run, and the cluster's status
#   bash scripts/cluster.sh down     # stop the three nodes (data is kept)
#   bash scripts/cluster.sh down --purge   # ... and delete the data directory
#   bash scripts/cluster.sh ctl N ARGS...     # rabbitmqctl against node N (1..3)
#   bash scripts/cluster.sh queues N ARGS...  # rabbitmq-queues against node N
#   bash scripts/cluster.sh pid N             # the OS pid of node N's VM
#   MW_SUPPLIER_PASSWORD=... bash scripts/cluster.sh supplier ID
#                                             # a supplier's MQTT login, write-only
#                                             # under movewatch/v1/ID/
#
# Environment (tests set all three to run a cluster of their own):
#   MW_CLUSTER_DIR        data directory          (default: <repo>/.cluster)
#   MW_CLUSTER_BASE_PORT  node N listens on AMQP BASE+N, MQTT BASE+10+N,
#                         Erlang distribution BASE+20+N   (default: 5800)
#   MW_CLUSTER_NAME       node name prefix: node N is {NAME}{N}@localhost
#                         (default: mw); unique per cluster, as every node on
#                         the machine registers with the one epmd
#   MW_RABBITMQ_BIN       RabbitMQ's scripts     (default: /usr/lib/rabbitmq/bin)
#
# Idempotent: `up` on a running cluster only checks it; `up` after `down`
# resumes the same cluster from its data.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DIR="${MW_CLUSTER_DIR:-$REPO/.cluster}"
BASE="${MW_CLUSTER_BASE_PORT:-5800}"
NAME="${MW_CLUSTER_NAME:-mw}"
# The real scripts, not /usr/sbin's wrappers: those switch to the rabbitmq
# user, who could not write a data directory owned by whoever runs this.
RMQ_BIN="${MW_RABBITMQ_BIN:-/usr/lib/rabbitmq/bin}"
NODES=(1 2 3)
START_TIMEOUT="${MW_CLUSTER_START_TIMEOUT:-120}"

die() { printf 'cluster.sh: error: %s\n' "$*" >&2; exit 1; }
info() { printf 'cluster.sh: %s\n' "$*" >&2; }

[[ "$BASE" =~ ^[0-9]+$ ]] && [ "$BASE" -ge 1024 ] && [ "$BASE" -le 65500 ] \
  || die "MW_CLUSTER_BASE_PORT must be a number from 1024 to 65500, not '$BASE'"
[[ "$NAME" =~ ^[a-z][a-z0-9_-]{0,30}$ ]] \
  || die "MW_CLUSTER_NAME must be a short lower-case name, not '$NAME'"
[ -x "$RMQ_BIN/rabbitmq-server" ] \
  || die "RabbitMQ not found at $RMQ_BIN (apt-get install rabbitmq-server, or set MW_RABBITMQ_BIN)"

node_name() { printf '%s%s@localhost' "$NAME" "$1"; }
amqp_port() { echo $((BASE + $1)); }
mqtt_port() { echo $((BASE + 10 + $1)); }
dist_port() { echo $((BASE + 20 + $1)); }
node_dir() { printf '%s/n%s' "$DIR" "$1"; }

# Runs "$@" with node N's environment: its own cookie (through HOME and the
# Erlang arguments, so neither /root/.erlang.cookie nor the system node's is
# used), its own config, and an empty env file in place of
# /etc/rabbitmq/rabbitmq-env.conf (which names the system node).
with_node() {
  local n=$1
  shift
  local cookie
  cookie="$(cat "$DIR/.erlang.cookie")"
  env HOME="$DIR" \
    RABBITMQ_NODENAME="$(node_name "$n")" \
    RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 \
    RABBITMQ_NODE_PORT="$(amqp_port "$n")" \
    RABBITMQ_DIST_PORT="$(dist_port "$n")" \
    RABBITMQ_MNESIA_BASE="$(node_dir "$n")/mnesia" \
    RABBITMQ_LOG_BASE="$(node_dir "$n")/log" \
    RABBITMQ_PID_FILE="$(node_dir "$n")/pid" \
    RABBITMQ_CONFIG_FILE="$(node_dir "$n")/rabbitmq.conf" \
    RABBITMQ_ADVANCED_CONFIG_FILE="$(node_dir "$n")/advanced.config" \
    RABBITMQ_ENABLED_PLUGINS_FILE="$DIR/enabled_plugins" \
    RABBITMQ_CONF_ENV_FILE="$DIR/rabbitmq-env.conf" \
    ERL_EPMD_ADDRESS=127.0.0.1 \
    RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-setcookie $cookie -kernel inet_dist_use_interface {127,0,0,1}" \
    RABBITMQ_CTL_ERL_ARGS="-setcookie $cookie" \
    "$@"
}

ctl() { # ctl N ARGS...: rabbitmqctl against node N
  local n=$1
  shift
  with_node "$n" "$RMQ_BIN/rabbitmqctl" -n "$(node_name "$n")" "$@"
}

queues() { # queues N ARGS...: rabbitmq-queues against node N
  local n=$1
  shift
  with_node "$n" "$RMQ_BIN/rabbitmq-queues" -n "$(node_name "$n")" "$@"
}

# The pid file first: asking a node that is not there through the CLI takes
# many seconds.
running() {
  local pidfile pid
  pidfile="$(node_dir "$1")/pid"
  [ -s "$pidfile" ] || return 1
  pid="$(cat "$pidfile")"
  [[ "$pid" =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null || return 1
  ctl "$1" -q ping --timeout 10 >/dev/null 2>&1
}

port_free() {
  ! timeout 1 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" >/dev/null 2>&1
}

prepare() {
  mkdir -p "$DIR"
  chmod 700 "$DIR"
  if [ ! -s "$DIR/.erlang.cookie" ]; then
    # A cookie of this cluster's own: whoever has it controls the nodes.
    (umask 077 && head -c 30 /dev/urandom | od -An -tx1 | tr -d ' \n' | tr 'a-f' 'A-F' >"$DIR/.erlang.cookie")
    chmod 400 "$DIR/.erlang.cookie"
  fi
  printf '[rabbitmq_mqtt,rabbitmq_consistent_hash_exchange].\n' >"$DIR/enabled_plugins"
  : >"$DIR/rabbitmq-env.conf"
  local n
  for n in "${NODES[@]}"; do
    mkdir -p "$(node_dir "$n")/log" "$(node_dir "$n")/mnesia"
    cat >"$(node_dir "$n")/rabbitmq.conf" <<EOF
# Written by scripts/cluster.sh; rewritten on every 'up'.
listeners.tcp.default = 127.0.0.1:$(amqp_port "$n")
mqtt.listeners.tcp.default = 127.0.0.1:$(mqtt_port "$n")
# Devices log in as their supplier (docs/SCALE-OUT.md); no anonymous access.
mqtt.allow_anonymous = false
mqtt.vhost = /
mqtt.exchange = amq.topic
# Three nodes: the minority side of a partition pauses rather than diverge.
cluster_partition_handling = pause_minority
# Three nodes share one disk here; the default (50 MB) is kept explicit.
disk_free_limit.absolute = 50MB
log.console = false
log.file.level = info
EOF
  done
}

cmd_up() {
  local started=$SECONDS n
  prepare
  local to_start=()
  for n in "${NODES[@]}"; do
    if running "$n"; then
      info "$(node_name "$n") already running"
      continue
    fi
    local p
    for p in "$(amqp_port "$n")" "$(mqtt_port "$n")" "$(dist_port "$n")"; do
      port_free "$p" || die "port $p (for $(node_name "$n")) is in use; set MW_CLUSTER_BASE_PORT to a free range"
    done
    to_start+=("$n")
  done
  # All at once: a node that was clustered waits for its peers on start.
  for n in "${to_start[@]}"; do
    info "starting $(node_name "$n") (log: $(node_dir "$n")/log/)"
    (
      cd "$(node_dir "$n")"
      with_node "$n" setsid "$RMQ_BIN/rabbitmq-server" >"$(node_dir "$n")/server.out" 2>&1 </dev/null &
    )
  done
  for n in "${to_start[@]}"; do
    local deadline=$((SECONDS + START_TIMEOUT))
    until ctl "$n" -q await_startup --timeout 5 >/dev/null 2>&1; do
      if [ "$SECONDS" -ge "$deadline" ]; then
        tail -n 20 "$(node_dir "$n")/server.out" >&2 || true
        die "$(node_name "$n") did not start within ${START_TIMEOUT}s; see $(node_dir "$n")/log/"
      fi
      sleep 1
    done
  done
  local first
  first="$(node_name 1)"
  for n in "${NODES[@]:1}"; do
    if ctl "$n" -q cluster_status --formatter json 2>/dev/null | grep -q "\"$first\""; then
      continue
    fi
    info "joining $(node_name "$n") to $first"
    # The CLI's own log lines (feature flags, tracking tables) go to a file.
    local log
    log="$(node_dir "$n")/join.log"
    {
      ctl "$n" -q stop_app && ctl "$n" -q reset && ctl "$n" -q join_cluster "$first" \
        && ctl "$n" -q start_app
    } >"$log" 2>&1 || die "$(node_name "$n") could not join $first; see $log"
  done
  # Every node sees all three running.
  local deadline=$((SECONDS + START_TIMEOUT))
  for n in "${NODES[@]}"; do
    until [ "$(ctl "$n" -q eval 'length(rabbit_nodes:all_running()).' 2>/dev/null)" = "3" ]; do
      [ "$SECONDS" -lt "$deadline" ] || die "$(node_name "$n") does not see the three nodes running"
      sleep 1
    done
  done
  info "cluster up in $((SECONDS - started))s"
  print_ports
}

print_ports() {
  local n
  for n in "${NODES[@]}"; do
    printf 'node %s amqp=%s mqtt=%s dist=%s\n' "$(node_name "$n")" \
      "$(amqp_port "$n")" "$(mqtt_port "$n")" "$(dist_port "$n")"
  done
}

cmd_down() {
  local purge=0 n
  [ "${1:-}" = "--purge" ] && purge=1
  if [ -s "$DIR/.erlang.cookie" ]; then
    for n in 3 2 1; do
      if running "$n"; then
        info "stopping $(node_name "$n")"
        # `shutdown` returns once the VM has exited.
        ctl "$n" -q shutdown >/dev/null 2>&1 || info "$(node_name "$n") did not stop cleanly"
      else
        info "$(node_name "$n") not running"
      fi
      # A VM that no longer answers (kill -STOP, stuck) is ended by its own
      # pid, never by name.
      local pidfile pid
      pidfile="$(node_dir "$n")/pid"
      if [ -s "$pidfile" ]; then
        pid="$(cat "$pidfile")"
        if [[ "$pid" =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null \
          && grep -q "$(node_name "$n")" "/proc/$pid/cmdline" 2>/dev/null; then
          info "killing $(node_name "$n") (pid $pid)"
          kill -9 "$pid" 2>/dev/null || true
        fi
        rm -f "$pidfile"
      fi
    done
  else
    info "no cluster under $DIR"
  fi
  if [ "$purge" -eq 1 ] && [ -d "$DIR" ]; then
    info "removing $DIR"
    rm -rf "$DIR"
  fi
}

cmd_status() {
  [ -s "$DIR/.erlang.cookie" ] || die "no cluster under $DIR (run: bash scripts/cluster.sh up)"
  local n any=0
  for n in "${NODES[@]}"; do
    if running "$n"; then
      printf 'node %s running amqp=%s mqtt=%s\n' "$(node_name "$n")" "$(amqp_port "$n")" "$(mqtt_port "$n")"
      [ "$any" -ne 0 ] || any=$n
    else
      printf 'node %s stopped\n' "$(node_name "$n")"
    fi
  done
  [ "$any" -ne 0 ] || die "no node of the cluster under $DIR is running"
  ctl "$any" cluster_status
}

cmd_pid() {
  local pidfile
  pidfile="$(node_dir "$1")/pid"
  [ -s "$pidfile" ] || die "no pid file for $(node_name "$1")"
  cat "$pidfile"
}

first_running() {
  local n
  for n in "${NODES[@]}"; do
    if running "$n"; then
      echo "$n"
      return 0
    fi
  done
  die "no node of the cluster under $DIR is running"
}

# A supplier's devices log in to the MQTT listener as user {supplier}. The
# user may publish to amq.topic and nothing else (configure and read: none),
# and only routing keys under movewatch.v1.{supplier}. (topic authorisation:
# the MQTT topic movewatch/v1/{supplier}/... with '/' as '.'). Idempotent:
# an existing supplier's password is replaced. The password comes from
# MW_SUPPLIER_PASSWORD and goes to rabbitmqctl on standard input, never on a
# command line.
cmd_supplier() {
  local id=${1:-}
  [[ "$id" =~ ^[a-z0-9_-]{1,32}$ ]] || die "a supplier id is [a-z0-9_-]{1,32}, not '$id'"
  [ -n "${MW_SUPPLIER_PASSWORD:-}" ] || die "set MW_SUPPLIER_PASSWORD to the supplier's MQTT password"
  local n users
  n="$(first_running)"
  users="$(ctl "$n" -q list_users --formatter json)"
  if printf '%s' "$users" | grep -q "\"user\":\"$id\""; then
    # Never turn an operator (guest, the engine's user) into a device login.
    printf '%s' "$users" | grep -q "\"user\":\"$id\",\"tags\":\[\]" \
      || die "user '$id' exists with tags (an operator account); choose another supplier id"
    printf '%s' "$MW_SUPPLIER_PASSWORD" | ctl "$n" -q change_password "$id" >/dev/null
  else
    printf '%s' "$MW_SUPPLIER_PASSWORD" | ctl "$n" -q add_user "$id" >/dev/null
  fi
  ctl "$n" -q set_permissions -p / "$id" '^$' '^amq\.topic$' '^$'
  ctl "$n" -q set_topic_permissions -p / "$id" amq.topic "^movewatch\\.v1\\.${id}\\." '^$'
  info "supplier $id: may publish only under movewatch/v1/$id/"
}

need_node() {
  [[ "${1:-}" =~ ^[123]$ ]] || die "expected a node number 1, 2 or 3"
  [ -s "$DIR/.erlang.cookie" ] || die "no cluster under $DIR (run: bash scripts/cluster.sh up)"
}

case "${1:-}" in
  up) cmd_up ;;
  down) shift; cmd_down "$@" ;;
  status) cmd_status ;;
  ports) print_ports ;;
  ctl) shift; need_node "${1:-}"; ctl "$@" ;;
  queues) shift; need_node "${1:-}"; queues "$@" ;;
  pid) shift; need_node "${1:-}"; cmd_pid "$1" ;;
  supplier) shift; [ -s "$DIR/.erlang.cookie" ] || die "no cluster under $DIR"; cmd_supplier "${1:-}" ;;
  *) printf 'usage: bash scripts/cluster.sh up|down [--purge]|status|ports|ctl N ARGS|queues N ARGS|pid N|supplier ID\n' >&2; exit 2 ;;
esac
