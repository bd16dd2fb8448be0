#!/usr/bin/env bash
# kafka_broker.sh - a real single-node Apache Kafka broker (KRaft: broker and controller in one
# JVM) on 127.0.0.1, for evengine's tests and for local use. The broker's jars come from Maven
# Central (scripts/kafka/pom.xml); no Docker, no Apache download mirror.
#
#   kafka_broker.sh fetch    resolve the broker classpath into $KAFKA_LIB_DIR (once; cached)
#   kafka_broker.sh start    fetch, write the config, format the storage, start, wait until
#                            ready; prints KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:<port> (and more)
#                            and writes them to $KAFKA_RUN_DIR/env
#   kafka_broker.sh stop     SIGTERM the broker by its recorded pid (never by name), SIGKILL after
#                            $KAFKA_STOP_TIMEOUT s; removes $KAFKA_RUN_DIR
#   kafka_broker.sh pause    stop it but keep $KAFKA_RUN_DIR (config, ports, topics, offsets)
#   kafka_broker.sh resume   start a paused broker again on the same ports and data
#   kafka_broker.sh status   exit 0 and print the env if running
#
# Settled by running it (2026-11-22, this machine kind: 2 cores, Java 17.0.15, Maven 3.8.7):
#   - Kafka 4.3.1 (Scala 2.13) runs as is from the jars Maven resolves for kafka_2.13 plus the
#     log4j2 binding (log4j-slf4j-impl 2.25.4 with log4j-api/core pinned, slf4j-api 1.7.36).
#     The first fetch takes ~10-60 s (the jars are ~110 MB) and is cached in $KAFKA_LIB_DIR.
#   - Format + start to "Kafka Server started" takes ~6-9 s with -XX:+UseSerialGC and a
#     256-512 MB heap. The first consumer-group join on a cold broker logs one
#     GroupCoordinatorNotAvailable and succeeds about a second later.
#   - aiokafka 0.14.0 against it: idempotent produce, group consume, manual commit,
#     transactions (send_offsets_to_transaction), read_committed: all work.
#
# Environment (all optional):
#   KAFKA_VERSION (4.3.1)  LOG4J2_VERSION (2.25.4)  KAFKA_POM (scripts/kafka/pom.xml)
#   KAFKA_LIB_DIR (~/.cache/evengine/kafka-lib/<version>)  KAFKA_RUN_DIR ($TMPDIR/evengine-kafka)
#   KAFKA_PORT / KAFKA_CONTROLLER_PORT (default: free ports picked at start)
#   KAFKA_HEAP_OPTS (-Xms256m -Xmx512m)  KAFKA_JVM_OPTS (see below)  JAVA_HOME / JAVA
#   KAFKA_AUTO_CREATE_TOPICS (true)  KAFKA_EXTRA_CONFIG (extra server.properties lines)
#   KAFKA_START_TIMEOUT (120)  KAFKA_STOP_TIMEOUT (30)  KAFKA_KEEP_RUN_DIR (0)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
KAFKA_VERSION="${KAFKA_VERSION:-4.3.1}"
LOG4J2_VERSION="${LOG4J2_VERSION:-2.25.4}"
KAFKA_POM="${KAFKA_POM:-$HERE/kafka/pom.xml}"
KAFKA_LIB_DIR="${KAFKA_LIB_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/evengine/kafka-lib/$KAFKA_VERSION}"
KAFKA_RUN_DIR="${KAFKA_RUN_DIR:-${TMPDIR:-/tmp}/evengine-kafka}"
KAFKA_HEAP_OPTS="${KAFKA_HEAP_OPTS:--Xms256m -Xmx512m}"
# SerialGC: no parallel GC threads fighting the tests for 2 cores. Add -XX:TieredStopAtLevel=1
# for a slightly faster start at the cost of throughput.
KAFKA_JVM_OPTS="${KAFKA_JVM_OPTS:--XX:+UseSerialGC -XX:+ExitOnOutOfMemoryError -Djava.awt.headless=true}"
KAFKA_START_TIMEOUT="${KAFKA_START_TIMEOUT:-120}"
KAFKA_STOP_TIMEOUT="${KAFKA_STOP_TIMEOUT:-30}"
KAFKA_AUTO_CREATE_TOPICS="${KAFKA_AUTO_CREATE_TOPICS:-true}"
if [ -n "${JAVA_HOME:-}" ]; then JAVA="${JAVA:-$JAVA_HOME/bin/java}"; else JAVA="${JAVA:-java}"; fi

case "$KAFKA_VERSION" in 3.*) KAFKA_MAJOR=3 ;; *) KAFKA_MAJOR=4 ;; esac
PID_FILE="$KAFKA_RUN_DIR/kafka.pid"
ENV_FILE="$KAFKA_RUN_DIR/env"
CFG="$KAFKA_RUN_DIR/server.properties"
LOG_DIR="$KAFKA_RUN_DIR/logs"
DATA_DIR="$KAFKA_RUN_DIR/data"

log() { echo "kafka_broker: $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

fetch() {
  if [ -f "$KAFKA_LIB_DIR/.complete" ]; then return 0; fi
  command -v mvn >/dev/null || die "mvn not found"
  [ -f "$KAFKA_POM" ] || die "no POM at $KAFKA_POM"
  local profile=()
  if [ "$KAFKA_MAJOR" = 3 ]; then profile=(-Pkafka3); fi
  rm -rf "$KAFKA_LIB_DIR"
  mkdir -p "$KAFKA_LIB_DIR"
  log "resolving Kafka $KAFKA_VERSION from Maven Central into $KAFKA_LIB_DIR"
  # stdout is the KEY=value lines callers parse: Maven's output (even -q prints
  # ANSI resets there on a first resolve) goes to stderr
  mvn -B -q -f "$KAFKA_POM" "${profile[@]}" \
      -Dkafka.version="$KAFKA_VERSION" -Dlog4j2.version="$LOG4J2_VERSION" \
      dependency:copy-dependencies \
      -DoutputDirectory="$KAFKA_LIB_DIR" -DincludeScope=runtime -Dstyle.color=never >&2 \
    || die "mvn dependency:copy-dependencies failed"
  [ -f "$KAFKA_LIB_DIR/kafka_2.13-$KAFKA_VERSION.jar" ] || die "kafka_2.13-$KAFKA_VERSION.jar missing"
  [ -f "$KAFKA_LIB_DIR/kafka-clients-$KAFKA_VERSION.jar" ] || die "kafka-clients-$KAFKA_VERSION.jar missing"
  touch "$KAFKA_LIB_DIR/.complete"
}

is_running() {
  [ -f "$PID_FILE" ] || return 1
  local pid; pid="$(cat "$PID_FILE")"
  kill -0 "$pid" 2>/dev/null || return 1
  # guard against PID reuse: only our broker JVM counts
  tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null | grep -q 'kafka\.Kafka' || return 1
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

free_ports() {  # two distinct free loopback ports
  python3 - <<'EOF'
import socket
a, b = socket.socket(), socket.socket()
a.bind(("127.0.0.1", 0)); b.bind(("127.0.0.1", 0))
print(a.getsockname()[1], b.getsockname()[1])
a.close(); b.close()
EOF
}

# Same format as 'kafka-storage.sh random-uuid' (22-char base64url). Never one that starts
# with '-': the storage tool's argument parser takes "-t -abc..." for a missing value and
# an option (seen here: 1 start in 64 failed that way).
new_cluster_id() {
  python3 -c '
import base64, uuid
while True:
    cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
    if not cid.startswith("-"):
        print(cid)
        break'
}

write_config() {
  local bport="$1" cport="$2"
  cat > "$CFG" <<EOF
# --- single combined KRaft node, static quorum of one voter ---
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:${cport}
controller.listener.names=CONTROLLER
listeners=PLAINTEXT://127.0.0.1:${bport},CONTROLLER://127.0.0.1:${cport}
advertised.listeners=PLAINTEXT://127.0.0.1:${bport}
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs=${DATA_DIR}

# --- topics ---
auto.create.topics.enable=${KAFKA_AUTO_CREATE_TOPICS}
num.partitions=1
default.replication.factor=1
min.insync.replicas=1

# --- internal topics on a one-broker cluster ---
offsets.topic.replication.factor=1
offsets.topic.num.partitions=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
share.coordinator.state.topic.num.partitions=1

# --- small and fast on 2 cores ---
group.initial.rebalance.delay.ms=0
num.network.threads=2
num.io.threads=2
background.threads=2
num.recovery.threads.per.data.dir=1
log.cleaner.threads=1
log.cleaner.dedupe.buffer.size=8388608
EOF
  if [ -n "${KAFKA_EXTRA_CONFIG:-}" ]; then printf '\n%s\n' "$KAFKA_EXTRA_CONFIG" >> "$CFG"; fi
}

write_logging() {  # prints the JVM flag that selects the config
  if [ "$KAFKA_MAJOR" = 3 ]; then
    cat > "$KAFKA_RUN_DIR/log4j.properties" <<'EOF'
log4j.rootLogger=INFO, file
log4j.appender.file=org.apache.log4j.FileAppender
log4j.appender.file.File=${kafka.logs.dir}/server.log
log4j.appender.file.layout=org.apache.log4j.PatternLayout
log4j.appender.file.layout.ConversionPattern=[%d] %p %m (%c)%n
log4j.logger.kafka.request.logger=WARN
log4j.logger.state.change.logger=WARN
EOF
    echo "-Dlog4j.configuration=file:$KAFKA_RUN_DIR/log4j.properties"
  else
    cat > "$KAFKA_RUN_DIR/log4j2.properties" <<'EOF'
status = warn
name = evengine-kafka
appender.file.type = File
appender.file.name = FILE
appender.file.fileName = ${sys:kafka.logs.dir}/server.log
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = FILE
logger.request.name = kafka.request.logger
logger.request.level = WARN
logger.statechange.name = state.change.logger
logger.statechange.level = WARN
EOF
    echo "-Dlog4j2.configurationFile=$KAFKA_RUN_DIR/log4j2.properties"
  fi
}

print_env() { cat "$ENV_FILE"; }

start() {
  if is_running; then log "already running"; print_env; return 0; fi
  fetch
  "$JAVA" -version >/dev/null 2>&1 || die "no java ($JAVA); Kafka 4.x brokers need Java 17+"
  rm -rf "$KAFKA_RUN_DIR"
  mkdir -p "$LOG_DIR" "$DATA_DIR"
  local bport cport cluster_id log_opt cp pid
  if [ -n "${KAFKA_PORT:-}" ] && [ -n "${KAFKA_CONTROLLER_PORT:-}" ]; then
    bport="$KAFKA_PORT"; cport="$KAFKA_CONTROLLER_PORT"
  else
    read -r bport cport < <(free_ports)
  fi
  cluster_id="$(new_cluster_id)"
  write_config "$bport" "$cport"
  log_opt="$(write_logging)"
  cp="$KAFKA_LIB_DIR/*"

  # = bin/kafka-storage.sh format -t <id> -c <cfg>   (static voters: no --standalone)
  if ! "$JAVA" -Xmx256m $KAFKA_JVM_OPTS -Dkafka.logs.dir="$LOG_DIR" "$log_opt" -cp "$cp" \
        kafka.tools.StorageTool format -t "$cluster_id" -c "$CFG" \
        > "$LOG_DIR/format.out" 2>&1 < /dev/null; then
    cat "$LOG_DIR/format.out" >&2
    die "storage format failed"
  fi

  launch "$log_opt"
  {
    echo "KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:$bport"
    echo "KAFKA_CONTROLLER_PORT=$cport"
    echo "KAFKA_CLUSTER_ID=$cluster_id"
    echo "KAFKA_PID=$(cat "$PID_FILE")"
    echo "KAFKA_LOG_DIR=$LOG_DIR"
  } > "$ENV_FILE"
  print_env
}

# Start the JVM on the config and data already in $KAFKA_RUN_DIR and wait until ready.
launch() {
  local log_opt="$1" pid bport
  bport="$(sed -n 's/^listeners=PLAINTEXT:\/\/127.0.0.1:\([0-9]*\),.*/\1/p' "$CFG")"
  : > "$LOG_DIR/server.log.mark"
  local lines_before=0
  [ -f "$LOG_DIR/server.log" ] && lines_before="$(wc -l < "$LOG_DIR/server.log")"
  # = bin/kafka-server-start.sh <cfg>  ->  kafka-run-class.sh kafka.Kafka <cfg>
  nohup "$JAVA" $KAFKA_HEAP_OPTS $KAFKA_JVM_OPTS -Dkafka.logs.dir="$LOG_DIR" "$log_opt" \
        -cp "$KAFKA_LIB_DIR/*" kafka.Kafka "$CFG" >> "$LOG_DIR/kafka.out" 2>&1 < /dev/null &
  pid=$!
  echo "$pid" > "$PID_FILE"

  local deadline=$((SECONDS + KAFKA_START_TIMEOUT))
  until port_open "$bport" && tail -n +"$((lines_before + 1))" "$LOG_DIR/server.log" 2>/dev/null | grep -q 'Kafka Server started'; do
    if ! kill -0 "$pid" 2>/dev/null; then
      tail -n 60 "$LOG_DIR/kafka.out" "$LOG_DIR/server.log" >&2 2>/dev/null || true
      rm -f "$PID_FILE"
      die "broker exited during startup (logs in $LOG_DIR)"
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
      tail -n 60 "$LOG_DIR/kafka.out" "$LOG_DIR/server.log" >&2 2>/dev/null || true
      KAFKA_KEEP_RUN_DIR=1 stop
      die "broker not ready after ${KAFKA_START_TIMEOUT}s (logs in $LOG_DIR)"
    fi
    sleep 0.2
  done
  log "ready on 127.0.0.1:$bport (pid $pid) after ${SECONDS}s"
}

# Start again a broker stopped with 'pause': same ports, same data (topics and offsets kept).
resume() {
  if is_running; then log "already running"; print_env; return 0; fi
  [ -f "$CFG" ] && [ -f "$ENV_FILE" ] || die "nothing to resume in $KAFKA_RUN_DIR (use start)"
  launch "$(write_logging)"
  sed -i "s/^KAFKA_PID=.*/KAFKA_PID=$(cat "$PID_FILE")/" "$ENV_FILE"
  print_env
}

stop() {
  if [ -f "$PID_FILE" ]; then
    local pid i
    pid="$(cat "$PID_FILE")"
    if is_running; then
      kill -TERM "$pid" 2>/dev/null || true          # runs Kafka's shutdown hook
      for ((i = 0; i < KAFKA_STOP_TIMEOUT * 10; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
      done
      if kill -0 "$pid" 2>/dev/null; then
        log "no exit after ${KAFKA_STOP_TIMEOUT}s, SIGKILL $pid"
        kill -KILL "$pid" 2>/dev/null || true
      fi
    fi
    rm -f "$PID_FILE"
  fi
  if [ "${KAFKA_KEEP_RUN_DIR:-0}" != 1 ]; then rm -rf "$KAFKA_RUN_DIR"; fi
}

case "${1:-}" in
  fetch) fetch ;;
  start) start ;;
  stop) stop ;;
  pause) KAFKA_KEEP_RUN_DIR=1 stop ;;
  resume) resume ;;
  status) if is_running; then print_env; else exit 1; fi ;;
  *) echo "usage: $0 fetch|start|stop|pause|resume|status" >&2; exit 2 ;;
esac
