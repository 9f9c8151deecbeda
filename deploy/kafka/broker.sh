#!/usr/bin/env bash
# A single-node Apache Kafka (KRaft, broker+controller) on 127.0.0.1, without Docker.
#   deploy/kafka/broker.sh start   fetch jars once (Maven), format storage once, start, wait until ready
#   deploy/kafka/broker.sh stop    stop cleanly (SIGTERM, then SIGKILL after 30 s)
#   deploy/kafka/broker.sh status  exit 0 when running
#   deploy/kafka/broker.sh reset   stop and delete the data folder
# Environment: LOCAL_KAFKA_PORT (9092), LOCAL_KAFKA_CONTROLLER_PORT (9093),
#   LOCAL_KAFKA_DATA (<repo>/.local/kafka), FEEDSTREAM_CACHE (~/.cache/feedstream), KAFKA_HEAP (1g).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
version="$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$here/pom.xml")"
port="${LOCAL_KAFKA_PORT:-9092}"
cport="${LOCAL_KAFKA_CONTROLLER_PORT:-9093}"
data="${LOCAL_KAFKA_DATA:-$repo/.local/kafka}"
cache="${FEEDSTREAM_CACHE:-$HOME/.cache/feedstream}"
libs="$cache/kafka-$version/libs"
pidfile="$data/broker.pid"
log="$data/broker.log"

say() { echo "[kafka] $*" >&2; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

running() { [[ -f "$pidfile" ]] && kill -0 "$(cat "$pidfile")" 2>/dev/null; }

# who listens on a port: "pid N (command)" when ss shows it, else "another process"
port_owner() {
  local pid cmd
  pid="$(ss -ltnpH "sport = :$1" 2>/dev/null | sed -n 's/.*pid=\([0-9]*\).*/\1/p' | head -1)"
  if [[ -z "$pid" ]]; then echo "another process"; return; fi
  cmd="$(tr '\0\n' '  ' < "/proc/$pid/cmdline" 2>/dev/null | sed 's/ -cp [^ ]*//; s/ -[XD][^ ]*//g' | sed "s/ *$//" | cut -c1-160)"
  echo "pid $pid${cmd:+ ($cmd)}"
}

fetch_jars() {
  if [[ -f "$libs/.complete" ]]; then return; fi
  command -v java >/dev/null || { say "java not found: install a JDK 17+ (e.g. apt-get install openjdk-17-jre-headless)"; exit 3; }
  command -v mvn >/dev/null || { say "mvn not found: install Maven (e.g. apt-get install maven)"; exit 3; }
  say "fetching Apache Kafka $version jars from Maven Central into $libs (once)"
  rm -rf "$libs"; mkdir -p "$libs"
  mvn -q -B -f "$here/pom.xml" dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="$libs" >&2
  touch "$libs/.complete"
}

java_run() { java -Xms256m -Xmx"${KAFKA_HEAP:-1g}" -Dlog4j2.configurationFile="$here/log4j2.xml" -cp "$libs/*" "$@"; }

write_config() {
  cat > "$data/server.properties" <<PROPS
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=127.0.0.1:$cport
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$cport
advertised.listeners=PLAINTEXT://127.0.0.1:$port
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$data/logs
num.partitions=4
auto.create.topics.enable=false
offsets.topic.replication.factor=1
offsets.topic.num.partitions=8
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=8
min.insync.replicas=1
group.initial.rebalance.delay.ms=0
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
PROPS
}

start() {
  if running && port_open "$port"; then say "already running on 127.0.0.1:$port (pid $(cat "$pidfile"))"; return; fi
  if port_open "$port"; then
    say "127.0.0.1:$port is taken by $(port_owner "$port"), not this checkout's broker: stop it, or set"
    say "LOCAL_KAFKA_PORT/LOCAL_KAFKA_CONTROLLER_PORT (find_broker uses it when it is a Kafka broker)"
    exit 4
  fi
  fetch_jars
  mkdir -p "$data"
  write_config
  if [[ ! -f "$data/logs/meta.properties" ]]; then
    local cid
    cid="$(java_run kafka.tools.StorageTool random-uuid)"
    java_run kafka.tools.StorageTool format --standalone -t "$cid" -c "$data/server.properties" >&2
  fi
  local t0=$SECONDS
  nohup java -Xms256m -Xmx"${KAFKA_HEAP:-1g}" -Dlog4j2.configurationFile="$here/log4j2.xml" \
    -cp "$libs/*" kafka.Kafka "$data/server.properties" >"$log" 2>&1 &
  echo $! > "$pidfile"
  for _ in $(seq 1 600); do
    if ! running; then say "broker exited during start; last lines of $log:"; tail -20 "$log" >&2; exit 5; fi
    if port_open "$port" && grep -q "Kafka Server started" "$log"; then
      say "ready on 127.0.0.1:$port in $((SECONDS - t0)) s (pid $(cat "$pidfile"), data $data)"; return
    fi
    sleep 0.2
  done
  say "not ready after 120 s; see $log"; exit 6
}

stop() {
  if ! running; then say "not running"; rm -f "$pidfile"; return; fi
  local pid; pid="$(cat "$pidfile")"
  kill -TERM "$pid"
  for _ in $(seq 1 150); do kill -0 "$pid" 2>/dev/null || { rm -f "$pidfile"; say "stopped"; return; }; sleep 0.2; done
  say "no clean stop after 30 s: killing"; kill -KILL "$pid" 2>/dev/null || true; rm -f "$pidfile"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) running && port_open "$port" ;;
  reset) stop; rm -rf "$data"; say "data removed" ;;
  *) echo "usage: $0 start|stop|status|reset" >&2; exit 2 ;;
esac
