# Sourced by the mysql image's entrypoint on the first start (empty data directory): creates
# the CDC user cdcsync reads the binlog as, with the password from the source-password secret.
cdc_password=$(cat /run/secrets/source-password)
docker_process_sql --database=mysql <<SQL
CREATE USER IF NOT EXISTS 'cdc'@'%' IDENTIFIED BY '${cdc_password}';
GRANT REPLICATION SLAVE, REPLICATION CLIENT, SELECT ON *.* TO 'cdc'@'%';
FLUSH PRIVILEGES;
SQL
