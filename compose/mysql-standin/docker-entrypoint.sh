#!/bin/bash
# The official mysql image's entrypoint contract, on MariaDB: on an empty datadir, initialise it,
# set the root password (MYSQL_ROOT_PASSWORD, or MYSQL_ALLOW_EMPTY_PASSWORD /
# MYSQL_RANDOM_ROOT_PASSWORD), create MYSQL_DATABASE and MYSQL_USER/MYSQL_PASSWORD (all
# privileges on that database), run /docker-entrypoint-initdb.d/* (*.sh, *.sql, *.sql.gz) on a
# temporary server that takes no TCP connections, then start the server on port 3306.
set -euo pipefail
note() { echo "$(date -u +%FT%TZ) 0 [Note] [Entrypoint]: $*" >&2; }
fail() { echo "$(date -u +%FT%TZ) 0 [ERROR] [Entrypoint]: $*" >&2; exit 1; }

# `docker run IMAGE --flag ...` and `... mysqld --flag` both mean the server with those flags.
if [ "${1:0:1}" = "-" ]; then set -- mysqld "$@"; fi
if [ "$1" != "mysqld" ] && [ "$1" != "mariadbd" ]; then exec "$@"; fi
shift
set -- mariadbd --user=mysql "$@"
note "STAND-IN for mysql:8.4: $(mariadbd --version)"

DATADIR=/var/lib/mysql
SOCKET=/run/mysqld/mysqld.sock
mkdir -p /run/mysqld "$DATADIR"
chown mysql:mysql /run/mysqld "$DATADIR"

sql_escape() { printf '%s' "$1" | sed "s/\\\\/\\\\\\\\/g; s/'/\\\\'/g"; }

if [ ! -d "$DATADIR/mysql" ]; then
    if [ -z "${MYSQL_ROOT_PASSWORD:-}" ] && [ -z "${MYSQL_ALLOW_EMPTY_PASSWORD:-}" ] && [ -z "${MYSQL_RANDOM_ROOT_PASSWORD:-}" ]; then
        fail "Database is uninitialized and password option is not specified
    You need to specify one of the following as an environment variable:
    - MYSQL_ROOT_PASSWORD
    - MYSQL_ALLOW_EMPTY_PASSWORD
    - MYSQL_RANDOM_ROOT_PASSWORD"
    fi
    note "Initializing database files"
    cp -a /usr/share/mariadb-datadir-template/. "$DATADIR/" || fail "copying the initial datadir failed"
    chown -R mysql:mysql "$DATADIR"
    root_password="${MYSQL_ROOT_PASSWORD:-}"
    if [ -n "${MYSQL_RANDOM_ROOT_PASSWORD:-}" ]; then
        root_password="$(head -c 18 /dev/urandom | base64)"
        note "GENERATED ROOT PASSWORD: $root_password"
    fi
    rp="$(sql_escape "$root_password")"
    setup_sql="CREATE USER IF NOT EXISTS 'root'@'%' IDENTIFIED BY '$rp';
GRANT ALL ON *.* TO 'root'@'%' WITH GRANT OPTION;
ALTER USER 'root'@'localhost' IDENTIFIED BY '$rp';"
    if [ -n "${MYSQL_DATABASE:-}" ]; then
        setup_sql+=$'\n'"CREATE DATABASE IF NOT EXISTS \`${MYSQL_DATABASE}\`;"
    fi
    if [ -n "${MYSQL_USER:-}" ] && [ -n "${MYSQL_PASSWORD:-}" ]; then
        setup_sql+=$'\n'"CREATE USER '$(sql_escape "$MYSQL_USER")'@'%' IDENTIFIED BY '$(sql_escape "$MYSQL_PASSWORD")';"
        if [ -n "${MYSQL_DATABASE:-}" ]; then
            setup_sql+=$'\n'"GRANT ALL ON \`${MYSQL_DATABASE}\`.* TO '$(sql_escape "$MYSQL_USER")'@'%';"
        fi
    fi
    if [ -z "$(ls -A /docker-entrypoint-initdb.d 2>/dev/null)" ]; then
        # Nothing to run on a temporary server: the server applies the setup itself before it
        # takes connections (--init-file), which saves a start and a shutdown.
        init_file=/run/mysqld/init.sql
        (umask 077 && printf '%s\n' "$setup_sql" > "$init_file")
        chown mysql:mysql "$init_file"
        note "MySQL init process done. Ready for start up."
        exec "$@" --init-file="$init_file"
    fi
    note "Starting temporary server"
    "$@" --skip-networking --socket="$SOCKET" &
    pid=$!
    for _ in $(seq 1 300); do
        mariadb-admin --socket="$SOCKET" -uroot ping >/dev/null 2>&1 && break
        kill -0 "$pid" 2>/dev/null || fail "the temporary server exited during initialisation"
        sleep 0.1
    done
    note "Temporary server started."
    run_sql() { mariadb --protocol=socket --socket="$SOCKET" -uroot --password="${root_password:-}" "$@"; }
    mariadb --protocol=socket --socket="$SOCKET" -uroot <<<"$setup_sql" || fail "setting up root, database and user failed"
    for f in /docker-entrypoint-initdb.d/*; do
        [ -e "$f" ] || continue
        case "$f" in
            *.sh) note "$0: running $f"; if [ -x "$f" ]; then "$f"; else . "$f"; fi ;;
            *.sql) note "$0: running $f"; run_sql ${MYSQL_DATABASE:+"$MYSQL_DATABASE"} <"$f" ;;
            *.sql.gz) note "$0: running $f"; gunzip -c "$f" | run_sql ${MYSQL_DATABASE:+"$MYSQL_DATABASE"} ;;
            *) note "$0: ignoring $f" ;;
        esac
    done
    note "Stopping temporary server"
    kill "$pid"
    wait "$pid" || true
    note "Temporary server stopped"
    note "MySQL init process done. Ready for start up."
fi
# MariaDB says "ready for connections." then "Version: ... port: 3306": the same readiness
# words as mysqld's one line.
exec "$@"
