# shellcheck shell=bash
# Sourced by scripts/test, scripts/demo and scripts/bench.
#
# sc_provision_postgres exports DATABASE_URL pointing at a reachable PostgreSQL:
#   1. $DATABASE_URL, if it is set and answers;
#   2. else a server on 127.0.0.1:5432 that accepts user postgres without a password;
#   3. else a private cluster under target/pg (or a temporary directory the postgres user can
#      reach), started with the system's initdb/pg_ctl; Debian's postgresql package is
#      installed first when those are missing and we are root.
# It stops only a cluster it started itself (sc_stop_postgres, called from an EXIT trap).
# SC_PRIVATE_PG=1 skips step 2 (to exercise step 3); SC_PG_PORT picks the private port.

SC_ROOT=${SC_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}
SC_PG_STARTED=""

sc_log() { printf '%s\n' "[pg] $*" >&2; }

sc_have() { command -v "$1" >/dev/null 2>&1; }

sc_pg_answers() {
    sc_have psql && PGCONNECT_TIMEOUT=3 psql "$1" -Atqc 'select 1' >/dev/null 2>&1
}

sc_pg_bindir() {
    if sc_have pg_config && [ -x "$(pg_config --bindir 2>/dev/null)/initdb" ]; then
        pg_config --bindir
        return 0
    fi
    local dir
    dir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
    if [ -n "$dir" ] && [ -x "$dir/initdb" ]; then
        echo "$dir"
        return 0
    fi
    if sc_have initdb && sc_have pg_ctl; then
        dirname "$(command -v initdb)"
        return 0
    fi
    return 1
}

sc_install_postgres() {
    if [ "$(id -u)" != 0 ]; then
        sc_log "PostgreSQL server binaries (initdb, pg_ctl) are missing and we are not root."
        sc_log "Install them (Debian: apt-get install postgresql) or set DATABASE_URL."
        return 1
    fi
    sc_log "installing Debian's postgresql package"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null && apt-get install -y -qq postgresql >/dev/null
}

# Runs a command as the cluster's owner: the postgres user when we are root (initdb refuses
# to run as root), ourselves otherwise.
sc_as_owner() {
    if [ "$(id -u)" = 0 ]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

sc_start_private() {
    local bindir port base
    if ! bindir=$(sc_pg_bindir); then
        sc_install_postgres || return 1
        bindir=$(sc_pg_bindir) || { sc_log "initdb still not found after installing"; return 1; }
    fi
    port=${SC_PG_PORT:-55432}
    base="$SC_ROOT/target/pg"
    if [ "$(id -u)" = 0 ]; then
        id postgres >/dev/null 2>&1 || useradd --system --home-dir /var/lib/postgresql postgres
        mkdir -p "$base"
        chown postgres "$base"
        if ! runuser -u postgres -- test -w "$base"; then
            # The checkout lives where the postgres user cannot reach (e.g. under /root).
            base="${TMPDIR:-/tmp}/structured-cooperation-pg"
            mkdir -p "$base"
            chown postgres "$base"
        fi
    else
        mkdir -p "$base"
    fi
    if [ ! -s "$base/data/PG_VERSION" ]; then
        sc_log "creating a private cluster in $base/data"
        sc_as_owner "$bindir/initdb" -D "$base/data" -U postgres -A trust -E UTF8 >"$base/initdb.log" 2>&1 \
            || { cat "$base/initdb.log" >&2; return 1; }
    fi
    if sc_as_owner "$bindir/pg_ctl" -D "$base/data" status >/dev/null 2>&1; then
        sc_log "reusing the private cluster already running in $base/data"
    else
        sc_log "starting the private cluster on 127.0.0.1:$port"
        sc_as_owner "$bindir/pg_ctl" -D "$base/data" -l "$base/server.log" -w -t 60 \
            -o "-p $port -k $base -c listen_addresses=127.0.0.1 -c max_connections=200" start >/dev/null \
            || { tail -n 20 "$base/server.log" >&2; return 1; }
        SC_PG_STARTED="$bindir/pg_ctl -D $base/data"
    fi
    export DATABASE_URL="postgresql://postgres@127.0.0.1:$port/postgres"
    sc_pg_answers "$DATABASE_URL" || { sc_log "the private cluster does not answer"; return 1; }
}

sc_provision_postgres() {
    if [ -n "${DATABASE_URL:-}" ] && sc_pg_answers "$DATABASE_URL"; then
        sc_log "using DATABASE_URL"
        return 0
    fi
    if ! sc_have psql; then
        sc_install_postgres || return 1
    fi
    local local_url="postgresql://postgres@127.0.0.1:5432/postgres"
    if [ -z "${SC_PRIVATE_PG:-}" ] && sc_pg_answers "$local_url"; then
        sc_log "using the server on 127.0.0.1:5432"
        export DATABASE_URL="$local_url"
        return 0
    fi
    sc_start_private
}

sc_stop_postgres() {
    if [ -n "${SC_TLS_STARTED:-}" ]; then
        # shellcheck disable=SC2086
        sc_as_owner $SC_TLS_STARTED -m fast stop >/dev/null 2>&1 || true
        SC_TLS_STARTED=""
    fi
    if [ -n "$SC_PG_STARTED" ]; then
        sc_log "stopping the private cluster"
        # shellcheck disable=SC2086
        sc_as_owner $SC_PG_STARTED -m fast stop >/dev/null 2>&1 || true
        SC_PG_STARTED=""
    fi
}

# sc_start_tls_cluster starts a second private cluster for the TLS tests (tests/tls.rs): TLS
# on, with a certificate for "localhost" signed by a CA made here, and password
# (scram-sha-256) authentication for TCP connections, with or without TLS. It exports
# SC_TLS_PORT, SC_TLS_CA (the CA's certificate), SC_TLS_OTHER_CA (a CA that signed nothing
# of the server's) and SC_TLS_USER / SC_TLS_PASSWORD, and is stopped by sc_stop_postgres.
SC_TLS_STARTED=""
sc_start_tls_cluster() {
    local bindir port base
    if ! bindir=$(sc_pg_bindir); then
        sc_install_postgres || return 1
        bindir=$(sc_pg_bindir) || { sc_log "initdb still not found after installing"; return 1; }
    fi
    if ! sc_have openssl; then
        [ "$(id -u)" = 0 ] || { sc_log "openssl is missing (apt-get install openssl)"; return 1; }
        sc_log "installing openssl"
        apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssl >/dev/null
    fi
    port=${SC_TLS_PG_PORT:-55433}
    base="${TMPDIR:-/tmp}/structured-cooperation-pg-tls"
    if [ -f "$base/data/postmaster.pid" ]; then
        sc_as_owner "$bindir/pg_ctl" -D "$base/data" -m immediate stop >/dev/null 2>&1 || true
    fi
    rm -rf "$base"
    mkdir -p "$base/certs"
    (
        cd "$base/certs"
        openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=sc test ca" \
            -keyout ca.key -out ca.crt >/dev/null 2>&1
        openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=sc other ca" \
            -keyout other-ca.key -out other-ca.crt >/dev/null 2>&1
        openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" \
            -keyout server.key -out server.csr >/dev/null 2>&1
        printf 'subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\n' >server.ext
        openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 \
            -extfile server.ext -out server.crt >/dev/null 2>&1
        chmod 600 server.key
    ) || { sc_log "could not make the test certificates"; return 1; }
    if [ "$(id -u)" = 0 ]; then
        id postgres >/dev/null 2>&1 || useradd --system --home-dir /var/lib/postgresql postgres
        chown -R postgres "$base"
    fi
    sc_as_owner "$bindir/initdb" -D "$base/data" -U postgres --auth-local=trust \
        --auth-host=scram-sha-256 -E UTF8 >"$base/initdb.log" 2>&1 \
        || { cat "$base/initdb.log" >&2; return 1; }
    sc_log "starting the TLS cluster on 127.0.0.1:$port"
    sc_as_owner "$bindir/pg_ctl" -D "$base/data" -l "$base/server.log" -w -t 60 \
        -o "-p $port -k $base -c listen_addresses=127.0.0.1 -c ssl=on \
            -c ssl_cert_file=$base/certs/server.crt -c ssl_key_file=$base/certs/server.key" \
        start >/dev/null || { tail -n 20 "$base/server.log" >&2; return 1; }
    SC_TLS_STARTED="$bindir/pg_ctl -D $base/data"
    sc_as_owner psql -h "$base" -p "$port" -U postgres -d postgres -qc \
        "CREATE ROLE sc_tls LOGIN SUPERUSER PASSWORD 'sc-tls-secret'" >/dev/null \
        || { sc_log "could not create the TLS test role"; return 1; }
    export SC_TLS_PORT=$port SC_TLS_CA="$base/certs/ca.crt" \
        SC_TLS_OTHER_CA="$base/certs/other-ca.crt" SC_TLS_USER=sc_tls SC_TLS_PASSWORD=sc-tls-secret
}
