#!/usr/bin/env bash
# postgres.sh - a real, throwaway PostgreSQL server on 127.0.0.1 for evengine's tests and CI,
# from Debian's server package (/usr/lib/postgresql/<ver>/bin). Never Debian's own cluster
# (pg_createcluster's 15/main on 5432): its own data dir, port and socket dir in $POSTGRES_RUN_DIR.
#
#   postgres.sh start     install the server package if missing (root: apt-get), initdb a fresh
#                         data dir, start, wait until it accepts connections, create database
#                         `evengine`; prints POSTGRES_URL=postgresql://postgres@127.0.0.1:<port>/evengine
#                         (and more KEY=VALUE lines) and writes them to $POSTGRES_RUN_DIR/env.
#                         Already running: prints the same lines again.
#   postgres.sh stop      pg_ctl stop -m fast, SIGKILL by pid if it has not exited after
#                         $POSTGRES_STOP_TIMEOUT s; removes $POSTGRES_RUN_DIR (only if start made it)
#   postgres.sh kill      SIGKILL the postmaster and its children at once (a crash); keeps the data
#   postgres.sh restart   start again on the same data dir and port (after kill: crash recovery;
#                         if running: a fast stop first); prints the env lines
#   postgres.sh status    exit 0 and print the env if running, else exit 1
#
# initdb and postgres refuse to run as root: as root the script runs them as the `postgres`
# system user (made by Debian's package; created here if missing) and gives it the run dir.
# Auth is trust for local and 127.0.0.1 connections (throwaway); fsync stays on (durability is
# what the tests check). Everything it starts it stops by pid, never by name.
#
# Settled by running it (this machine kind: 2 cores, Debian 12, postgresql-15 15.18):
#   - The package is on the polyglot image. Its postinst makes cluster 15/main (port 5432,
#     /var/lib/postgresql/15/main) but the image's /usr/sbin/policy-rc.d (exit 101) keeps it
#     from starting; if an install made here does start one, the script stops it again.
#   - start (initdb --no-sync, start, CREATE DATABASE) takes about 1.2 s; restart after kill
#     (crash recovery) 0.2-0.3 s.
#   - kill and stop take 1-2 s each: they wait until the pids are gone, and this machine's
#     init process (pid 1) reaps orphaned zombies only every second or so. Not waiting fails
#     the restart: postgres takes a zombie postmaster's pid, which kill(pid, 0) still finds,
#     for a live one ("lock file .s.PGSQL.<port>.lock already exists").
#   - Every child of the postmaster is in a session of its own (setsid), so there is no
#     process group to kill: kill lists the children (ps --ppid) and SIGKILLs them with it.
#
# Environment (all optional):
#   POSTGRES_RUN_DIR ($TMPDIR/evengine-postgres; must be reachable by the postgres user)
#   POSTGRES_BIN_DIR (newest /usr/lib/postgresql/*/bin)  POSTGRES_PORT (a free port picked at start)
#   POSTGRES_DB (evengine)  POSTGRES_OS_USER (postgres; only used as root)
#   POSTGRES_START_TIMEOUT (60)  POSTGRES_STOP_TIMEOUT (30)  POSTGRES_KEEP_RUN_DIR (0)
#   POSTGRES_EXTRA_CONFIG (extra postgresql.conf lines)
set -euo pipefail

POSTGRES_RUN_DIR="${POSTGRES_RUN_DIR:-${TMPDIR:-/tmp}/evengine-postgres}"
POSTGRES_DB="${POSTGRES_DB:-evengine}"
POSTGRES_OS_USER="${POSTGRES_OS_USER:-postgres}"
POSTGRES_START_TIMEOUT="${POSTGRES_START_TIMEOUT:-60}"
POSTGRES_STOP_TIMEOUT="${POSTGRES_STOP_TIMEOUT:-30}"

RUN="$POSTGRES_RUN_DIR"
DATA="$RUN/data"
SOCK="$RUN/sock"
LOG="$RUN/postgres.log"
ENV_FILE="$RUN/env"
PORT_FILE="$RUN/port"
MARK="$RUN/.evengine-postgres"     # start made this run dir: stop may remove it

log() { echo "postgres.sh: $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# ---------------------------------------------------------------- binaries and the OS user

find_bin() {
  if [ -n "${POSTGRES_BIN_DIR:-}" ]; then
    [ -x "$POSTGRES_BIN_DIR/postgres" ] || die "POSTGRES_BIN_DIR=$POSTGRES_BIN_DIR has no postgres binary"
    BIN="$POSTGRES_BIN_DIR"; return 0
  fi
  local d best=""
  # newest major version first (sort -V: 9.6 < 15 < 16)
  for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V); do
    if [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ] && [ -x "$d/postgres" ]; then best="$d"; fi
  done
  [ -n "$best" ] || return 1
  BIN="$best"
}

online_clusters() {  # "ver name" of Debian clusters that are up (pg_lsclusters from postgresql-common)
  command -v pg_lsclusters >/dev/null || return 0
  pg_lsclusters -h 2>/dev/null | awk '$4 == "online" { print $1, $2 }'
}

install_server() {
  [ "$(id -u)" = 0 ] || die "no PostgreSQL server binaries (/usr/lib/postgresql/*/bin) and not root: apt-get install postgresql"
  command -v apt-get >/dev/null || die "no PostgreSQL server binaries and no apt-get"
  local before; before="$(online_clusters)"
  log "installing Debian's postgresql package"
  export DEBIAN_FRONTEND=noninteractive
  if ! apt-get install -y -q postgresql > "${TMPDIR:-/tmp}/evengine-postgres-apt.log" 2>&1; then
    log "apt-get install failed; apt-get update and again"
    apt-get update -q >> "${TMPDIR:-/tmp}/evengine-postgres-apt.log" 2>&1 || true
    apt-get install -y -q postgresql >> "${TMPDIR:-/tmp}/evengine-postgres-apt.log" 2>&1 \
      || { tail -n 30 "${TMPDIR:-/tmp}/evengine-postgres-apt.log" >&2; die "apt-get install postgresql failed"; }
  fi
  # The postinst creates a default cluster (<ver>/main on 5432) and, where services may start,
  # starts it. We never use it: stop what this install started, leave the rest alone.
  local c
  while read -r c; do
    [ -n "$c" ] || continue
    if ! grep -qxF "$c" <<< "$before"; then
      log "stopping Debian's auto-started cluster $c (we never use it)"
      # shellcheck disable=SC2086
      pg_ctlcluster $c stop -m fast >&2 || log "could not stop cluster $c (harmless: other port and socket)"
    fi
  done <<< "$(online_clusters)"
}

ensure_bin() {
  find_bin && return 0
  install_server
  find_bin || die "postgresql installed but no server binaries under /usr/lib/postgresql/*/bin"
}

AS_ROOT=0
[ "$(id -u)" = 0 ] && AS_ROOT=1

ensure_os_user() {
  [ "$AS_ROOT" = 1 ] || return 0
  id -u "$POSTGRES_OS_USER" >/dev/null 2>&1 && return 0
  log "creating system user $POSTGRES_OS_USER"
  useradd --system --user-group --home-dir /var/lib/postgresql --shell /bin/bash "$POSTGRES_OS_USER" \
    || die "useradd $POSTGRES_OS_USER failed"
}

# Run a server program as the postgres user when we are root (initdb/postgres refuse root),
# from inside the run dir (the caller's cwd may be one that user cannot enter).
as_pg() {
  if [ "$AS_ROOT" = 1 ]; then
    (cd "$RUN" && runuser -u "$POSTGRES_OS_USER" -- "$@")
  else
    (cd "$RUN" && "$@")
  fi
}

# ---------------------------------------------------------------- state

postmaster_pid() {  # first line of postmaster.pid, if any
  [ -f "$DATA/postmaster.pid" ] || return 1
  local pid; pid="$(head -n 1 "$DATA/postmaster.pid" 2>/dev/null)"
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  echo "$pid"
}

is_ours() {  # pid $1 is a postgres process on our data dir (guards against pid reuse)
  local pid="$1" cmd
  cmd="$(tr '\0' ' ' 2>/dev/null < "/proc/$pid/cmdline")" || return 1
  [[ "$cmd" == *postgres* && "$cmd" == *"$DATA"* ]]
}

is_running() {
  local pid; pid="$(postmaster_pid)" || return 1
  kill -0 "$pid" 2>/dev/null || return 1
  is_ours "$pid"
}

port_of() { cat "$PORT_FILE"; }

free_port() {
  python3 -c '
import socket
s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

print_env() { cat "$ENV_FILE"; }

write_env() {
  local port; port="$(port_of)"
  {
    echo "POSTGRES_URL=postgresql://postgres@127.0.0.1:$port/$POSTGRES_DB"
    echo "POSTGRES_PORT=$port"
    echo "POSTGRES_PID=$(postmaster_pid)"
    echo "POSTGRES_SOCKET_DIR=$SOCK"
    echo "POSTGRES_DATA_DIR=$DATA"
    echo "POSTGRES_LOG=$LOG"
    echo "POSTGRES_RUN_DIR=$RUN"
  } > "$ENV_FILE"
}

psql_() {  # psql as superuser over TCP (the same way the tests connect)
  PGCONNECT_TIMEOUT=5 "$BIN/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$(port_of)" -U postgres "$@"
}

# ---------------------------------------------------------------- commands

init_run_dir() {
  if [ -d "$RUN" ] && [ -n "$(ls -A "$RUN" 2>/dev/null)" ]; then
    [ -f "$MARK" ] || die "$RUN exists, is not empty and was not made by this script; set POSTGRES_RUN_DIR"
    rm -rf "$RUN"
  fi
  mkdir -p "$RUN"
  touch "$MARK"
  mkdir -p "$SOCK"
  if [ "$AS_ROOT" = 1 ]; then
    chown -R "$POSTGRES_OS_USER:" "$RUN"
    runuser -u "$POSTGRES_OS_USER" -- test -w "$RUN" \
      || { rm -rf "$RUN"; die "the $POSTGRES_OS_USER user cannot reach $RUN (a parent directory it may not enter?); set POSTGRES_RUN_DIR under /tmp"; }
  fi
  chmod 700 "$RUN"
  # a unix socket path is at most 107 bytes
  [ "${#SOCK}" -le 90 ] || die "POSTGRES_RUN_DIR is too long for a unix socket path: $SOCK"
}

write_config() {
  local port="$1"
  cat >> "$DATA/postgresql.conf" <<EOF

# ---- evengine scripts/postgres.sh: throwaway test server ----
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '$SOCK'
fsync = on
synchronous_commit = on
full_page_writes = on
logging_collector = off
log_destination = 'stderr'
log_line_prefix = '%m [%p] %q%u@%d '
EOF
  if [ -n "${POSTGRES_EXTRA_CONFIG:-}" ]; then printf '\n%s\n' "$POSTGRES_EXTRA_CONFIG" >> "$DATA/postgresql.conf"; fi
}

# Start postgres on the data dir in $RUN and wait until it accepts TCP connections.
launch() {
  local port; port="$(port_of)"
  local pid
  # A postmaster.pid whose pid now belongs to some other process would make postgres refuse
  # to start; one of ours still alive was handled by the caller.
  if pid="$(postmaster_pid)" && ! is_ours "$pid"; then rm -f "$DATA/postmaster.pid"; fi
  local t0=$EPOCHREALTIME
  if ! as_pg "$BIN/pg_ctl" -D "$DATA" -l "$LOG" -w -t "$POSTGRES_START_TIMEOUT" -s start >&2; then
    tail -n 40 "$LOG" >&2 2>/dev/null || true
    die "pg_ctl start failed (log: $LOG)"
  fi
  local deadline=$((SECONDS + POSTGRES_START_TIMEOUT))
  until "$BIN/pg_isready" -q -h 127.0.0.1 -p "$port" -U postgres -d postgres -t 2; do
    if ! is_running; then
      tail -n 40 "$LOG" >&2 2>/dev/null || true
      die "postgres exited during startup (log: $LOG)"
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
      tail -n 40 "$LOG" >&2 2>/dev/null || true
      die "postgres not accepting connections on 127.0.0.1:$port after ${POSTGRES_START_TIMEOUT}s (log: $LOG)"
    fi
    sleep 0.1
  done
  log "ready on 127.0.0.1:$port (pid $(postmaster_pid)) after $(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.2f", b - a }')s"
}

start() {
  if is_running; then log "already running"; print_env; return 0; fi
  ensure_bin
  ensure_os_user
  init_run_dir
  local port="${POSTGRES_PORT:-}"
  [ -n "$port" ] || port="$(free_port)"
  echo "$port" > "$PORT_FILE"
  # trust: throwaway server; superuser `postgres` whoever runs it; --no-sync: the template
  # files need no fsync (the server itself runs with fsync on).
  if ! as_pg "$BIN/initdb" -D "$DATA" -U postgres --auth=trust -E UTF8 --no-locale --no-sync \
        > "$RUN/initdb.log" 2>&1 < /dev/null; then
    cat "$RUN/initdb.log" >&2
    die "initdb failed"
  fi
  write_config "$port"
  launch
  psql_ -d postgres -c "CREATE DATABASE \"$POSTGRES_DB\"" >&2 \
    || { tail -n 20 "$LOG" >&2; stop_server; die "CREATE DATABASE $POSTGRES_DB failed"; }
  write_env
  print_env
}

restart() {
  [ -f "$DATA/PG_VERSION" ] && [ -f "$PORT_FILE" ] || die "nothing to restart in $RUN (use start)"
  find_bin || die "no PostgreSQL server binaries"
  if is_running; then stop_server; fi
  launch
  write_env
  print_env
}

# SIGKILL the postmaster and every child at once: a crash, no shutdown checkpoint.
kill_server() {
  if ! is_running; then log "not running"; return 0; fi
  local pid kids
  pid="$(postmaster_pid)"
  kids="$(ps -o pid= --ppid "$pid" 2>/dev/null | xargs)"
  # postmaster first, so it cannot start crash recovery when it sees its children die
  # shellcheck disable=SC2086
  kill -KILL "$pid" $kids 2>/dev/null || true
  # Children forked in between notice the postmaster's death and exit by themselves. Wait
  # until every pid is gone, zombies included: a child still attached to the shared memory, or
  # a postmaster pid that kill(pid, 0) still finds (a zombie the init process has not reaped
  # yet: here that takes up to ~1-2 s), makes the restart refuse ("lock file ... already exists").
  local i p alive
  for ((i = 0; i < POSTGRES_STOP_TIMEOUT * 10; i++)); do
    alive=""
    for p in $pid $kids; do kill -0 "$p" 2>/dev/null && alive="$alive $p"; done
    [ -z "$alive" ] && break
    sleep 0.1
  done
  [ -z "$alive" ] || die "postgres processes still alive after SIGKILL:$alive"
  log "killed postmaster $pid and children: ${kids:-none}"
}

stop_server() {
  local pid i
  if pid="$(postmaster_pid)" && is_ours "$pid"; then
    find_bin || true
    if [ -n "${BIN:-}" ]; then
      as_pg "$BIN/pg_ctl" -D "$DATA" -m fast -w -t "$POSTGRES_STOP_TIMEOUT" -s stop >&2 || true
    fi
    if kill -0 "$pid" 2>/dev/null && is_ours "$pid"; then
      kill -TERM "$pid" 2>/dev/null || true
      for ((i = 0; i < 50; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      if kill -0 "$pid" 2>/dev/null; then
        log "no exit after pg_ctl stop, SIGKILL $pid"
        kill_server
      fi
    fi
    # until the init process has reaped it (a zombie still holds the pid for a second or so)
    for ((i = 0; i < 50; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  fi
}

stop() {
  [ -d "$RUN" ] || return 0
  stop_server
  if [ "${POSTGRES_KEEP_RUN_DIR:-0}" != 1 ] && [ -f "$MARK" ]; then rm -rf "$RUN"; fi
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  kill) kill_server ;;
  restart) restart ;;
  status) if is_running && [ -f "$ENV_FILE" ]; then print_env; else exit 1; fi ;;
  *) echo "usage: $0 start|stop|kill|restart|status" >&2; exit 2 ;;
esac
