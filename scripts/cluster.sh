#!/usr/bin/env bash
# The whole seckill topology on one machine: one Redis ledger (AOF, fsync always), four
# ticketd nodes in ledger mode with gates sized by their weights, and nginx in front with
# weighted round robin 1:2:3:4 — a stream upstream for the binary protocol and an http
# upstream for GET /buy/ticket.
#
#   scripts/cluster.sh up       start it (builds nothing: `make cluster` builds first)
#   scripts/cluster.sh down     stop every process by PID, remove what `up` made
#   scripts/cluster.sh status   what runs where
#   scripts/cluster.sh report   per-node sales (from the ledger's orders stream) and each
#                               node's gate refills and Redis calls (its /stats)
#   scripts/cluster.sh exec CMD run CMD where the front is reachable (the front's
#                               namespace in netns mode; here otherwise)
#   scripts/cluster.sh redis ARGS  redis-cli ARGS against the ledger
#   scripts/cluster.sh node-addr N  node N's binary address (HOST:PORT)
#   scripts/cluster.sh kill-node N | stop-node N | cont-node N | start-node N
#   scripts/cluster.sh cut-node N | heal-node N   (netns: N loses Redis, keeps nginx)
#   scripts/cluster.sh restart-redis [--kill] [--empty] | stop-redis | cont-redis
#   scripts/cluster.sh node-addr N | node-admin N | front-addr | front-http | log NAME
#
# Each node is a host of its own when the machine allows it (root and iproute2): its own
# network namespace and address on a private bridge, with nginx and Redis in namespaces
# of their own too, so a node can be cut off from Redis alone. Otherwise every part gets
# its own 127.0.0.x address. Nothing outside this machine is ever addressed.
#
# Settings (environment): CLUSTER_DIR (default target/cluster), CLUSTER_TOPOLOGY
# (auto | netns | loopback), CLUSTER_EVENT (default 1:10000), CLUSTER_WEIGHTS
# (default "1 2 3 4"), CLUSTER_BUFFER (tickets beyond each node's share, default 50),
# CLUSTER_HOLD_TTL (default 15m), CLUSTER_REDIS_TIMEOUT (each node's --redis-timeout,
# default 2s: Redis here syncs every write, and a sync can stall past the 500 ms
# default while the disk is busy), CLUSTER_PREFIX (names of namespaces and links,
# default tkc), CLUSTER_SUBNET (first three octets in netns mode, default 10.77.0),
# CLUSTER_LOOPBACK (first three octets in loopback mode, default 127.0.0).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
DIR=${CLUSTER_DIR:-$ROOT/target/cluster}
EVENT=${CLUSTER_EVENT:-1:10000}
WEIGHTS=(${CLUSTER_WEIGHTS:-1 2 3 4})
BUFFER=${CLUSTER_BUFFER:-50}
HOLD_TTL=${CLUSTER_HOLD_TTL:-15m}
REDIS_TIMEOUT=${CLUSTER_REDIS_TIMEOUT:-2s}
PREFIX=${CLUSTER_PREFIX:-tkc}
SUBNET=${CLUSTER_SUBNET:-10.77.0}
LOOPBACK=${CLUSTER_LOOPBACK:-127.0.0}
TICKETD=${TICKETD:-$ROOT/target/release/ticketd}
STREAM_MODULE=/usr/lib/nginx/modules/ngx_stream_module.so

BINARY_PORT=7878   # each node's binary listener
HTTP_PORT=8080     # each node's HTTP listener
ADMIN_PORT=9464    # each node's /healthz, /readyz, /stats
FRONT_BINARY=7000  # nginx stream front
FRONT_HTTP=7080    # nginx http front
REDIS_PORT=6379

die() { echo "cluster: $*" >&2; exit 1; }
say() { echo "cluster: $*"; }

total_weight() { local t=0 w; for w in "${WEIGHTS[@]}"; do t=$((t + w)); done; echo "$t"; }

# --- where things are -------------------------------------------------------------
# The topology chosen by `up` is kept in $DIR/topology, so every later command agrees.
topology() { cat "$DIR/topology" 2>/dev/null || echo none; }

net() { if [ "$(topology)" = netns ]; then echo "$SUBNET"; else echo "$LOOPBACK"; fi; }
front_ip() { echo "$(net).1"; }
redis_ip() { echo "$(net).2"; }
node_ip() { echo "$(net).$((10 + $1))"; }
node_ns() { echo "$PREFIX-n$1"; }

# Runs a command in a part's namespace (netns mode) or here (loopback mode).
in_ns() {
  local ns=$1; shift
  if [ "$(topology)" = netns ]; then ip netns exec "$ns" "$@"; else "$@"; fi
}

pidfile() { echo "$DIR/pids/$1.pid"; }

# Starts NAME in the background in namespace NS, logging to LOG, and records its PID
# (the program's own: `ip netns exec` execs it).
spawn() {
  local name=$1 ns=$2 log=$3; shift 3
  if [ "$(topology)" = netns ]; then
    ip netns exec "$ns" "$@" >> "$log" 2>&1 &
  else
    "$@" >> "$log" 2>&1 &
  fi
  echo $! > "$(pidfile "$name")"
}
# Running: the process exists and is not a zombie (a killed child whose parent exited
# may wait a while to be reaped, and `kill -0` still finds it).
alive() {
  local f pid; f=$(pidfile "$1"); [ -f "$f" ] || return 1
  pid=$(cat "$f")
  kill -0 "$pid" 2>/dev/null && ! grep -q '^State:[[:space:]]*Z' "/proc/$pid/status" 2>/dev/null
}

# --- bring up ----------------------------------------------------------------------
choose_topology() {
  local want=${CLUSTER_TOPOLOGY:-auto}
  case "$want" in
    loopback) echo loopback ;;
    netns|auto)
      if [ "$(id -u)" = 0 ] && command -v ip >/dev/null \
          && ip netns add "$PREFIX-probe" 2>/dev/null; then
        ip netns del "$PREFIX-probe"
        echo netns
      elif [ "$want" = netns ]; then
        die "network namespaces are not available here (need root and iproute2)"
      else
        echo loopback
      fi ;;
    *) die "CLUSTER_TOPOLOGY must be auto, netns or loopback" ;;
  esac
}

# One host: a namespace with loopback up and one veth leg on the bridge.
add_host() {
  local ns=$1 ip=$2 leg=$3
  ip netns add "$ns"
  ip link add "$leg" type veth peer name eth0 netns "$ns"
  ip link set "$leg" master "$PREFIX-br" up
  ip -n "$ns" link set lo up
  ip -n "$ns" addr add "$ip/24" dev eth0
  ip -n "$ns" link set eth0 up
}

make_network() {
  # The bridge has no address: nothing of this machine's own network takes part.
  ip link add "$PREFIX-br" type bridge
  ip link set "$PREFIX-br" up
  add_host "$PREFIX-lb" "$(front_ip)" "$PREFIX-lb-v"
  add_host "$PREFIX-redis" "$(redis_ip)" "$PREFIX-rd-v"
  local i
  for i in "${!WEIGHTS[@]}"; do
    add_host "$(node_ns $((i + 1)))" "$(node_ip $((i + 1)))" "$PREFIX-n$((i + 1))-v"
  done
}

# Waits (bounded) until HOST:PORT accepts, from namespace NS; on failure says what the
# part's log (logs/LOG.log) ends with.
wait_port() {
  local ns=$1 host=$2 port=$3 what=$4 i
  for i in $(seq 100); do
    if in_ns "$ns" bash -c "exec 3<>/dev/tcp/$host/$port" 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  die "$what did not start listening on $host:$port; its log ends: $(tail -n 5 "$DIR/logs/$5.log" 2>/dev/null)"
}

start_redis() {
  mkdir -p "$DIR/redis"
  spawn redis "$PREFIX-redis" "$DIR/logs/redis.log" \
    redis-server --bind "$(redis_ip)" --port "$REDIS_PORT" --dir "$DIR/redis" \
    --appendonly yes --appendfsync always --save "" --protected-mode no --daemonize no
  wait_port "$PREFIX-redis" "$(redis_ip)" "$REDIS_PORT" redis redis
}

start_node() {
  local n=$1 weight=${WEIGHTS[$(($1 - 1))]} ip
  ip=$(node_ip "$n")
  spawn "node-$n" "$(node_ns "$n")" "$DIR/logs/node-$n.log" \
    "$TICKETD" --listen "$ip:$BINARY_PORT" --http "$ip:$HTTP_PORT" \
    --admin "$ip:$ADMIN_PORT" --redis "redis://$(redis_ip):$REDIS_PORT" \
    --node-id "$n" --weight "$weight" --total-weight "$(total_weight)" --buffer "$BUFFER" \
    --event "$EVENT" --hold-ttl "$HOLD_TTL" --redis-timeout "$REDIS_TIMEOUT" --shards 1 --http-anonymous
}

write_nginx_conf() {
  local i binary="" http="" tw
  tw=$(total_weight)
  for i in "${!WEIGHTS[@]}"; do
    local ip; ip=$(node_ip $((i + 1)))
    binary+="        server $ip:$BINARY_PORT weight=${WEIGHTS[$i]} max_fails=1 fail_timeout=2s;"$'\n'
    http+="        server $ip:$HTTP_PORT weight=${WEIGHTS[$i]} max_fails=1 fail_timeout=2s;"$'\n'
  done
  mkdir -p "$DIR/nginx/tmp"
  cat > "$DIR/nginx/nginx.conf" <<EOF
# Written by scripts/cluster.sh (weights ${WEIGHTS[*]} of $tw); docs/DEPLOYMENT.md explains it.
load_module $STREAM_MODULE;
worker_processes 1;
worker_rlimit_nofile 20000;
pid $DIR/nginx/nginx.pid;
error_log $DIR/logs/nginx-error.log warn;
daemon off;
events { worker_connections 19000; }

stream {
    upstream ticketd_binary {
$binary    }
    server {
        listen $(front_ip):$FRONT_BINARY;
        proxy_pass ticketd_binary;
        proxy_connect_timeout 1s;
        proxy_next_upstream on;
        proxy_next_upstream_tries 4;
        proxy_timeout 10m;
    }
}

http {
    access_log off;
    client_body_temp_path $DIR/nginx/tmp/body;
    proxy_temp_path $DIR/nginx/tmp/proxy;
    fastcgi_temp_path $DIR/nginx/tmp/fastcgi;
    uwsgi_temp_path $DIR/nginx/tmp/uwsgi;
    scgi_temp_path $DIR/nginx/tmp/scgi;
    upstream ticketd_http {
$http        keepalive 64;
    }
    server {
        listen $(front_ip):$FRONT_HTTP;
        location / {
            proxy_pass http://ticketd_http;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_connect_timeout 1s;
            # A GET /buy/ticket is not idempotent: never send one twice.
            proxy_next_upstream off;
        }
    }
}
EOF
}

start_nginx() {
  write_nginx_conf
  spawn nginx "$PREFIX-lb" "$DIR/logs/nginx.log" nginx -c "$DIR/nginx/nginx.conf" -p "$DIR/nginx"
  wait_port "$PREFIX-lb" "$(front_ip)" "$FRONT_BINARY" nginx nginx-error
}

cmd_up() {
  [ -x "$TICKETD" ] || die "no $TICKETD: run \`make cluster\` (it builds first)"
  command -v redis-server >/dev/null || die "redis-server is missing: run \`make cluster\`"
  command -v nginx >/dev/null || die "nginx is missing: run \`make cluster\`"
  [ -f "$STREAM_MODULE" ] || die "nginx's stream module is missing: apt-get install libnginx-mod-stream"
  if [ -f "$DIR/topology" ]; then die "a cluster is already up in $DIR: scripts/cluster.sh down first"; fi
  if ip link show "$PREFIX-br" >/dev/null 2>&1 || ip netns list 2>/dev/null | grep -q "^$PREFIX-"; then
    die "namespaces or bridge named $PREFIX-* exist (left by an earlier run?): scripts/cluster.sh down removes them"
  fi
  mkdir -p "$DIR/pids" "$DIR/logs"
  # A start that fails half way removes what it made.
  UP_DONE=0
  trap '[ "$UP_DONE" = 1 ] || { echo "cluster: start failed; removing what it made" >&2; cmd_down >/dev/null; }' EXIT
  choose_topology > "$DIR/topology"
  if [ "$(topology)" = netns ]; then
    make_network
    say "topology: network namespaces $PREFIX-lb, $PREFIX-redis, $PREFIX-n1..$PREFIX-n${#WEIGHTS[@]} on bridge $PREFIX-br ($SUBNET.0/24)"
  else
    say "topology: loopback addresses (namespaces need root and iproute2)"
  fi
  start_redis
  in_ns "$PREFIX-redis" "$TICKETD" create-events --redis "redis://$(redis_ip):$REDIS_PORT" \
    --event "$EVENT" --hold-ttl "$HOLD_TTL" >> "$DIR/logs/create-events.log" 2>&1 \
    || die "could not create the event: $(tail -n 3 "$DIR/logs/create-events.log")"
  local n
  for n in $(seq ${#WEIGHTS[@]}); do start_node "$n"; done
  for n in $(seq ${#WEIGHTS[@]}); do
    wait_port "$(node_ns "$n")" "$(node_ip "$n")" "$BINARY_PORT" "node $n" "node-$n"
  done
  start_nginx
  UP_DONE=1
  cmd_status
}

# --- looking -------------------------------------------------------------------------
cmd_status() {
  [ -f "$DIR/topology" ] || { say "no cluster is up in $DIR"; return 0; }
  local n state
  say "topology $(topology); everything it made is in $DIR"
  say "front (nginx, weighted round robin ${WEIGHTS[*]}):"
  say "  binary protocol  $(front_ip):$FRONT_BINARY"
  say "  HTTP             http://$(front_ip):$FRONT_HTTP/buy/ticket?user=U"
  alive redis && state=up || state=down
  say "redis (AOF, fsync always)  $(redis_ip):$REDIS_PORT  $state"
  for n in $(seq ${#WEIGHTS[@]}); do
    alive "node-$n" && state=up || state=down
    say "node $n  weight ${WEIGHTS[$((n - 1))]}/$(total_weight)  $(node_ip "$n"):$BINARY_PORT  http :$HTTP_PORT  admin :$ADMIN_PORT  $state"
  done
  if [ "$(topology)" = netns ]; then
    say "the front is reached from its namespace, e.g.:"
    say "  scripts/cluster.sh exec target/release/loadgen --addr $(front_ip):$FRONT_BINARY --shared-ledger --reconnect --conns 1000 --requests 1000000 --users 1000000"
  else
    say "e.g.: target/release/loadgen --addr $(front_ip):$FRONT_BINARY --shared-ledger --reconnect --conns 1000 --requests 1000000 --users 1000000"
  fi
  say "stop and remove everything: make cluster-down"
}

# Per node: sales in the ledger's orders stream (the truth), and the node's own counters.
cmd_report() {
  [ -f "$DIR/topology" ] || die "no cluster is up in $DIR"
  local event=${EVENT%%:*} n
  local rcli=(in_ns "$PREFIX-redis" redis-cli -h "$(redis_ip)" -p "$REDIS_PORT")
  local sold
  # Each entry is one ledger call: its node, then its orders "order_id:user:qty,…".
  sold=$("${rcli[@]}" --raw XRANGE "{ev:$event}:orders" - + | awk '
    prev == "node" { node = $0 }
    prev == "orders" { k = split($0, made, ","); for (i = 1; i <= k; i++) { split(made[i], f, ":"); n[node] += f[3] } }
    { prev = $0 }
    END { for (k in n) print k, n[k] }')
  local total=0 tw; tw=$(total_weight)
  while read -r node count; do [ -n "$node" ] && total=$((total + count)); done <<< "$sold"
  printf '%-6s %-7s %-9s %-10s %-10s %s\n' node weight sold share expected "stats (refills, redis calls, unavailable)"
  for n in $(seq ${#WEIGHTS[@]}); do
    local count share expected stats
    count=$(awk -v n="$n" '$1 == n { print $2 }' <<< "$sold"); count=${count:-0}
    share=$(awk -v c="$count" -v t="$total" 'BEGIN { printf "%.1f%%", t ? 100 * c / t : 0 }')
    expected=$(awk -v w="${WEIGHTS[$((n - 1))]}" -v t="$tw" 'BEGIN { printf "%.1f%%", 100 * w / t }')
    stats=$(in_ns "$(node_ns "$n")" bash -c "exec 3<>/dev/tcp/$(node_ip "$n")/$ADMIN_PORT && printf 'GET /stats HTTP/1.0\r\n\r\n' >&3 && cat <&3" 2>/dev/null \
      | awk '/^ticketd_/ { printf "%s=%s ", $1, $2 }' || true)
    printf '%-6s %-7s %-9s %-10s %-10s %s\n' "$n" "${WEIGHTS[$((n - 1))]}/$tw" "$count" "$share" "$expected" "${stats:-(node down)}"
  done
  echo "total sold in the ledger: $total"
}

cmd_exec() {
  [ -f "$DIR/topology" ] || die "no cluster is up in $DIR"
  in_ns "$PREFIX-lb" "$@"
}

# --- faults --------------------------------------------------------------------------
signal_node() {
  local sig=$1 n=$2 pid
  alive "node-$n" || die "node $n is not running"
  pid=$(cat "$(pidfile "node-$n")")
  kill "-$sig" "$pid"
  [ "$sig" = STOP ] && wait_stopped "$pid" "node $n"
  return 0
}

# kill -STOP returns once the signal is queued; each thread stops only when it next
# passes through the kernel, which on a loaded host can be after a request sent right
# away was read (a test's "frozen" node then sold it). Frozen means every thread shows
# state T.
wait_stopped() {
  local pid=$1 what=$2 tries=0 state
  while :; do
    state=$(awk '{print $3}' /proc/"$pid"/task/*/stat 2>/dev/null | sort -u | tr -d '\n')
    [ "$state" = T ] && return 0
    tries=$((tries + 1))
    [ "$tries" -ge 500 ] && die "$what did not stop within 5 s (thread states: $state)"
    sleep 0.01
  done
}

cmd_cut_node() {
  [ "$(topology)" = netns ] || die "cutting one node off needs the netns topology (use restart-redis or SIGSTOP of Redis here)"
  ip -n "$(node_ns "$1")" route add blackhole "$(redis_ip)/32"
  say "node $1 can no longer reach Redis (blackhole route); nginx still reaches it"
}

cmd_heal_node() {
  [ "$(topology)" = netns ] || die "needs the netns topology"
  ip -n "$(node_ns "$1")" route del blackhole "$(redis_ip)/32"
  say "node $1 reaches Redis again"
}

# Restarts Redis on its data dir: --kill ends it with SIGKILL (what AOF fsync always is
# for), --empty removes its data first.
cmd_restart_redis() {
  local empty="" sig=TERM arg
  for arg in "$@"; do
    case "$arg" in
      --empty) empty=1 ;;
      --kill) sig=KILL ;;
      *) die "restart-redis takes --empty and --kill" ;;
    esac
  done
  alive redis && kill -CONT "$(cat "$(pidfile redis)")" && kill "-$sig" "$(cat "$(pidfile redis)")"
  local i; for i in $(seq 100); do alive redis || break; sleep 0.1; done
  if [ -n "$empty" ]; then
    rm -rf "$DIR/redis"
    say "Redis's data removed: it restarts empty (nodes must refuse to sell, never recreate the event)"
  fi
  start_redis
  say "Redis restarted"
}

# --- tear down -----------------------------------------------------------------------
cmd_down() {
  local f pid
  if [ -d "$DIR/pids" ]; then
    for f in "$DIR"/pids/*.pid; do
      [ -f "$f" ] || continue
      pid=$(cat "$f")
      kill -CONT "$pid" 2>/dev/null || true
      kill -TERM "$pid" 2>/dev/null || true
    done
    for f in "$DIR"/pids/*.pid; do
      [ -f "$f" ] || continue
      pid=$(cat "$f")
      for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -KILL "$pid" 2>/dev/null || true
    done
  fi
  # Namespaces and the bridge go by their names, so a run that lost its directory is
  # cleaned up too.
  if command -v ip >/dev/null; then
    local ns
    for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep "^$PREFIX-" || true); do
      # Anything still running in it (its PID file lost) would keep it alive.
      ip netns pids "$ns" 2>/dev/null | xargs -r kill -KILL 2>/dev/null || true
      ip netns del "$ns" 2>/dev/null || true
    done
    ip link del "$PREFIX-br" 2>/dev/null || true
    local link
    for link in $(ip -o link show 2>/dev/null | awk -F': ' '{print $2}' | cut -d@ -f1 | grep "^$PREFIX-" || true); do
      ip link del "$link" 2>/dev/null || true
    done
  fi
  rm -rf "$DIR"
  say "down: processes stopped, namespaces and bridge removed, $DIR deleted"
}

case "${1:-}" in
  up) cmd_up ;;
  down) cmd_down ;;
  status) cmd_status ;;
  report) cmd_report ;;
  exec) shift; cmd_exec "$@" ;;
  redis) shift; in_ns "$PREFIX-redis" redis-cli -h "$(redis_ip)" -p "$REDIS_PORT" "$@" ;;
  node-addr) echo "$(node_ip "$2"):$BINARY_PORT" ;;
  front-addr) echo "$(front_ip):$FRONT_BINARY" ;;
  front-http) echo "$(front_ip):$FRONT_HTTP" ;;
  topology) topology ;;
  kill-node) signal_node KILL "$2"; say "node $2 killed (SIGKILL)" ;;
  stop-node) signal_node STOP "$2"; say "node $2 frozen (SIGSTOP)" ;;
  cont-node) signal_node CONT "$2"; say "node $2 resumed (SIGCONT)" ;;
  start-node) start_node "$2"; wait_port "$(node_ns "$2")" "$(node_ip "$2")" "$BINARY_PORT" "node $2" "node-$2" ;;
  cut-node) cmd_cut_node "$2" ;;
  heal-node) cmd_heal_node "$2" ;;
  restart-redis) shift; cmd_restart_redis "$@" ;;
  stop-redis) pid=$(cat "$(pidfile redis)"); kill -STOP "$pid"; wait_stopped "$pid" Redis; say "Redis frozen (SIGSTOP)" ;;
  cont-redis) kill -CONT "$(cat "$(pidfile redis)")"; say "Redis resumed (SIGCONT)" ;;
  node-admin) echo "$(node_ip "$2"):$ADMIN_PORT" ;;
  log) cat "$DIR/logs/$2.log" ;;
  *) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 2 ;;
esac
