#!/usr/bin/env bash
# Reconciliation benchmark: `cdcsync reconcile` over N orders that agree, rows/s and peak RSS.
#
#   crates/reconcile/bench/run.sh [ROWS] [PARALLELISM] [CHUNK_ROWS]
#
# Loads ROWS (default 5,000,000) orders into MariaDB database `rcbench` with the load generator,
# copies them into PostgreSQL `rcbench.orders` in the applier's table layout (INTO OUTFILE →
# COPY, values in the form the pipeline writes), then times `cdcsync reconcile` (release build)
# under /usr/bin/time. Set REUSE=1 to keep already loaded tables.
set -euo pipefail
cd "$(dirname "$0")/../../.."
ROWS=${1:-5000000}
PAR=${2:-2}
CHUNK=${3:-10000}
eval "$(scripts/stack env)"
BIN=${BIN:-target/release/cdcsync}
[ -x "$BIN" ] || cargo build --release -p cdcsync
pw() { echo "$1" | sed -E 's#mysql://[^:]+:([^@]+)@.*#\1#'; }
ROOTPW=$(pw "$MYSQL_ADMIN_URL")
TSV=/var/tmp/cdcsync-stack/rcbench_orders.tsv
if [ "${REUSE:-0}" != 1 ]; then
  mariadb -h127.0.0.1 -P13306 -uroot -p"$ROOTPW" -e "DROP DATABASE IF EXISTS rcbench"
  MYSQL_ADMIN_URL=$MYSQL_ADMIN_URL "$BIN" loadgen --db rcbench --prefill "$ROWS" --quiet
  rm -f "$TSV"
  mariadb -h127.0.0.1 -P13306 -uroot -p"$ROOTPW" -N -e "SET time_zone='+00:00'; SELECT id,user_id,status,amount,discount,tax,currency,item_count,attributes,shipping_address,note,DATE_FORMAT(created_at,'%Y-%m-%d %H:%i:%s.%f'),IF(paid_at IS NULL,NULL,CONCAT(DATE_FORMAT(paid_at,'%Y-%m-%d %H:%i:%s.%f'),'+00')),DATE_FORMAT(updated_time,'%Y-%m-%d %H:%i:%s.%f'),version,1000,'f',NULL,NULL INTO OUTFILE '$TSV' FROM rcbench.orders"
  psql "$POSTGRES_URL" -v ON_ERROR_STOP=1 -q \
    -c "DROP SCHEMA IF EXISTS rcbench CASCADE" -c "CREATE SCHEMA rcbench" \
    -c "CREATE TABLE rcbench.orders (id numeric(20,0) NOT NULL, user_id bigint, status text, amount numeric(12,2), discount numeric(12,2), tax numeric(12,2), currency text, item_count integer, attributes jsonb, shipping_address text, note text, created_at timestamp(6) without time zone, paid_at timestamp(6) with time zone, updated_time timestamp(6) without time zone, version integer, _cdc_version numeric(39,0) NOT NULL, _cdc_deleted boolean NOT NULL DEFAULT false, _cdc_source_ts timestamptz, _cdc_applied_at timestamptz)" \
    -c "\copy rcbench.orders FROM '$TSV'" -c "ALTER TABLE rcbench.orders ADD PRIMARY KEY (id)" -c "VACUUM ANALYZE rcbench.orders"
fi
CFG=$(mktemp --suffix .toml)
cat > "$CFG" <<TOML
[source]
name = "rcbench"
url = "$MYSQL_URL"
include_tables = ["rcbench.orders"]
[kafka]
bootstrap_servers = "$KAFKA_BOOTSTRAP"
[warehouse]
url = "$POSTGRES_URL"
[reconcile]
chunk_rows = $CHUNK
parallelism = $PAR
[telemetry]
bind = "127.0.0.1:0"
TOML
# CPU seconds used by each server (its processes plus the children they reaped: PostgreSQL
# backends), so the run shows where the time went.
server_cpu() {
  local tck; tck=$(getconf CLK_TCK)
  for name in mariadbd postgres; do
    local t=0 s
    for p in $(pgrep -x "$name"); do
      s=$(awk '{print $14+$15+$16+$17}' "/proc/$p/stat" 2>/dev/null || echo 0)
      t=$((t + ${s:-0}))
    done
    echo -n "$name $(awk -v t="$t" -v k="$tck" 'BEGIN{printf "%.1f", t/k}') s  "
  done
}
echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB, load $(cut -d' ' -f1-3 /proc/loadavg)"
before=$(server_cpu)
/usr/bin/time -f "peak RSS %M KiB, wall %e s, user %U s, sys %S s" "$BIN" reconcile --config "$CFG" --table rcbench.orders
echo "server CPU before: $before"
echo "server CPU after:  $(server_cpu)"
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
rm -f "$CFG"
