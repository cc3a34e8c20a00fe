#!/usr/bin/env bash
# Local proof of the Laravel side of the event store, on this machine's packages only
# (php-cli, php-mysql, php-illuminate-database, mariadb-server; MariaDB 10.11 stands in for
# Cloud SQL MySQL 8.4):
#   1. two throwaway MariaDB servers: event store (databases events, events_sql, user
#      sync_worker) and primary (database suitex, user suitex_app);
#   2. schema parity: migrations/*.sql applied to events_sql with the mariadb client,
#      laravel/bin/migrate.php applied to events (root credentials), worker granted as
#      migration 0003 does; SHOW CREATE TABLE (minus AUTO_INCREMENT=N) and SHOW TRIGGERS
#      (name, event, table, statement, timing) must be identical;
#   3. the parity check must FAIL against a deliberately altered copy of the Laravel migration;
#   4. scenario2.php (Scenario 2 of the epic) and bench_eloquent.php 2000, JSON printed.
# Exits non-zero on any failure. Everything lives in a temp dir removed on exit.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
LARAVEL="$(cd "$HERE/.." && pwd)"
REPO="$(cd "$LARAVEL/.." && pwd)"
BIN="$LARAVEL/bin"
MIGRATION="$LARAVEL/database/migrations/2026_11_27_000001_create_event_store_table.php"
BENCH_EVENTS="${BENCH_EVENTS:-2000}"
SCENARIO_EVENTS="${SCENARIO_EVENTS:-200}"

for tool in php mariadb mariadbd mariadb-install-db; do
    command -v "$tool" >/dev/null || { echo "verify-local: $tool not found" >&2; exit 2; }
done
php -r 'exit(extension_loaded("pdo_mysql") ? 0 : 1);' || { echo "verify-local: php pdo_mysql missing" >&2; exit 2; }

TMP="$(mktemp -d "${TMPDIR:-/tmp}/laravel-verify.XXXXXX")"
PIDS=()
cleanup() {
    local rc=$?
    for pid in "${PIDS[@]}"; do
        kill -9 "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$TMP"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log() { echo "== $*" >&2; }

free_port() {
    php -r '$s = stream_socket_server("tcp://127.0.0.1:0"); $n = stream_socket_get_name($s, false); echo substr($n, strrpos($n, ":") + 1);'
}

rand_pw() { php -r 'echo bin2hex(random_bytes(12));'; }

# start_server NAME -> sets ${NAME}_PORT and ${NAME}_SOCK
start_server() {
    local name="$1" dir="$TMP/$1" port
    mkdir -p "$dir"
    mariadb-install-db --no-defaults --datadir="$dir/data" --user=root \
        --auth-root-authentication-method=normal --skip-test-db >"$dir/install.log" 2>&1 \
        || { cat "$dir/install.log" >&2; return 1; }
    port="$(free_port)"
    mariadbd --no-defaults --user=root --datadir="$dir/data" --socket="$dir/sock" \
        --pid-file="$dir/pid" --port="$port" --bind-address=127.0.0.1 \
        --character-set-server=utf8mb4 --collation-server=utf8mb4_unicode_ci \
        --skip-name-resolve --skip-log-bin --innodb-flush-log-at-trx-commit=2 \
        >"$dir/server.log" 2>&1 &
    PIDS+=("$!")
    for _ in $(seq 1 150); do
        if mariadb --no-defaults --socket="$dir/sock" -uroot -e 'select 1' >/dev/null 2>&1; then
            printf -v "${name}_PORT" '%s' "$port"
            printf -v "${name}_SOCK" '%s' "$dir/sock"
            return 0
        fi
        sleep 0.1
    done
    echo "verify-local: server $name did not start" >&2
    cat "$dir/server.log" >&2
    return 1
}

# sql SOCK [DB] < statements
sql() { mariadb --no-defaults --socket="$1" -uroot ${2:+"$2"}; }
# q SOCK DB QUERY : raw, tab-separated, no headers
q() { mariadb --no-defaults --socket="$1" -uroot -N -B -r "$2" -e "$3"; }

log "starting two throwaway MariaDB servers"
start_server ES
start_server PRI
ROOT_PW="$(rand_pw)"
WORKER_PW="$(rand_pw)"
TENANT_PW="$(rand_pw)"

sql "$ES_SOCK" <<SQL
CREATE USER IF NOT EXISTS 'root'@'127.0.0.1';
ALTER USER 'root'@'127.0.0.1' IDENTIFIED BY '$ROOT_PW';
GRANT ALL PRIVILEGES ON *.* TO 'root'@'127.0.0.1' WITH GRANT OPTION;
CREATE DATABASE events;
CREATE DATABASE events_sql;
CREATE DATABASE events_mutated;
CREATE USER 'sync_worker'@'%' IDENTIFIED BY '$WORKER_PW';
SQL
sql "$PRI_SOCK" <<SQL
CREATE DATABASE suitex;
CREATE USER 'suitex_app'@'%' IDENTIFIED BY '$TENANT_PW';
GRANT ALL PRIVILEGES ON suitex.* TO 'suitex_app'@'%';
SQL

log "applying migrations/*.sql to events_sql with the mariadb client"
shopt -s nullglob
SQL_FILES=("$REPO"/migrations/*.sql)
[ "${#SQL_FILES[@]}" -gt 0 ] || { echo "verify-local: no migrations/*.sql found" >&2; exit 1; }
for f in "${SQL_FILES[@]}"; do
    echo "   $(basename "$f")" >&2
    sql "$ES_SOCK" events_sql <"$f"
done

# run_php SCRIPT ARGS... with event store env DB (root or worker) and the primary env.
es_env() { # USER PW DB
    export DB_EVENT_STORE_HOST=127.0.0.1 DB_EVENT_STORE_PORT="$ES_PORT" \
        DB_EVENT_STORE_DATABASE="$3" DB_EVENT_STORE_USERNAME="$1" DB_EVENT_STORE_PASSWORD="$2"
}
export DB_HOST=127.0.0.1 DB_PORT="$PRI_PORT" DB_DATABASE=suitex DB_USERNAME=suitex_app DB_PASSWORD="$TENANT_PW"

log "php laravel/bin/migrate.php against events (root credentials)"
MIGRATE_OUT="$(es_env root "$ROOT_PW" events; php "$BIN/migrate.php")"
echo "$MIGRATE_OUT"
[ "$MIGRATE_OUT" = '{"migrated":true}' ] || { echo "verify-local: unexpected migrate output" >&2; exit 1; }

log "granting the worker on events.event_store as migration 0003 does"
GRANT_FILE=("$REPO"/migrations/*grant_sync_worker*.sql)
sql "$ES_SOCK" events <"${GRANT_FILE[0]}"

show_create() { # DB
    q "$ES_SOCK" "$1" 'SHOW CREATE TABLE event_store' | cut -f2- | sed -E 's/ AUTO_INCREMENT=[0-9]+//'
}
show_triggers() { # DB : Trigger, Event, Table, Statement, Timing
    q "$ES_SOCK" "$1" 'SHOW TRIGGERS' | cut -f1-5
}

# compare DB_A DB_B : prints a diff and returns 1 on any difference
compare() {
    local a="$1" b="$2" rc=0
    show_create "$a" >"$TMP/create.$a"
    show_create "$b" >"$TMP/create.$b"
    show_triggers "$a" >"$TMP/triggers.$a"
    show_triggers "$b" >"$TMP/triggers.$b"
    [ -s "$TMP/create.$a" ] && [ -s "$TMP/create.$b" ] || { echo "missing table" >&2; return 1; }
    diff -u --label "$a: SHOW CREATE TABLE" --label "$b: SHOW CREATE TABLE" \
        "$TMP/create.$a" "$TMP/create.$b" || rc=1
    diff -u --label "$a: SHOW TRIGGERS" --label "$b: SHOW TRIGGERS" \
        "$TMP/triggers.$a" "$TMP/triggers.$b" || rc=1
    [ "$(wc -l <"$TMP/triggers.$a")" -eq 2 ] || { echo "expected 2 triggers on $a" >&2; rc=1; }
    return "$rc"
}

log "parity: SHOW CREATE TABLE / SHOW TRIGGERS, Laravel (events) vs SQL (events_sql)"
if ! compare events events_sql; then
    echo "verify-local: PARITY FAILED between the Laravel migration and migrations/*.sql" >&2
    exit 1
fi
echo "--- SHOW CREATE TABLE (identical on both, AUTO_INCREMENT counter stripped):"
cat "$TMP/create.events"
echo "--- SHOW TRIGGERS (identical on both):"
cat "$TMP/triggers.events"
echo "--- trigger metadata, not compared (Laravel | SQL client):"
for db in events events_sql; do
    q "$ES_SOCK" "$db" "SELECT TRIGGER_NAME, SQL_MODE, CHARACTER_SET_CLIENT, COLLATION_CONNECTION FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA='$db' ORDER BY TRIGGER_NAME" | sed "s/^/$db\t/"
done
echo "PARITY OK"

log "append-only: UPDATE and DELETE refused even for root, worker grants as 0003"
PROBE_OUT="$(q "$ES_SOCK" events "INSERT INTO event_store (account_id, event_id, aggregate_type, aggregate_id, payload, created_at) VALUES ('probe', UUID(), 'probe', 'probe', '{}', NOW())" 2>&1 || true)"
[ -z "$PROBE_OUT" ] || { echo "verify-local: probe insert failed: $PROBE_OUT" >&2; exit 1; }
for stmt in "UPDATE event_store SET aggregate_id = 'x'" "DELETE FROM event_store"; do
    if out="$(q "$ES_SOCK" events "$stmt" 2>&1)"; then
        echo "verify-local: '$stmt' was NOT refused" >&2; exit 1
    fi
    echo "refused: $stmt -> $(grep -m1 ERROR <<<"$out")"
done
q "$ES_SOCK" events "SHOW GRANTS FOR 'sync_worker'@'%'" | sed 's/IDENTIFIED BY PASSWORD .*/IDENTIFIED BY PASSWORD <redacted>/'

log "negative control: an altered copy of the Laravel migration must break parity"
MUTANT="$TMP/mutant_create_event_store_table.php"
sed "s/\$table->string('aggregate_id');/\$table->string('aggregate_id', 100);/" "$MIGRATION" >"$MUTANT"
if cmp -s "$MIGRATION" "$MUTANT"; then
    echo "verify-local: could not alter the migration copy (pattern not found)" >&2; exit 1
fi
(es_env root "$ROOT_PW" events_mutated; php "$BIN/migrate.php" "$MUTANT") >/dev/null
if compare events_mutated events_sql >"$TMP/mutant.diff" 2>&1; then
    echo "verify-local: the parity check did NOT detect an altered migration" >&2
    exit 1
fi
grep -E '^[-+] ' "$TMP/mutant.diff" || true
echo "NEGATIVE CONTROL OK: the altered migration was detected"

log "php laravel/bin/scenario2.php $SCENARIO_EVENTS (worker + tenant credentials)"
(es_env sync_worker "$WORKER_PW" events; php "$BIN/scenario2.php" "$SCENARIO_EVENTS")
log "php laravel/bin/scenario2.php 50 again: a rerun on the same databases stays exact"
(es_env sync_worker "$WORKER_PW" events; php "$BIN/scenario2.php" 50) >/dev/null

log "php laravel/bin/bench_eloquent.php $BENCH_EVENTS (worker credentials)"
(es_env sync_worker "$WORKER_PW" events; php "$BIN/bench_eloquent.php" "$BENCH_EVENTS")

log "all checks passed"
