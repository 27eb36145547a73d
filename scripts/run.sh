#!/usr/bin/env bash
# Set up the project and run the health monitor and the backup worker against
# the local Docker engine, in the foreground, until Ctrl-C or SIGTERM.
#
# The engine is $DOCKER_HOST if set, else /var/run/docker.sock if it responds,
# else a private loopback-only dockerd under /tmp/molochain-test (as in the
# tests). The script also starts, if missing, PostgreSQL and a Pushgateway on
# 127.0.0.1:19091 for the workers to back up and report to. Installing Debian
# packages needs root. Every setting of the README may be exported first, e.g.
# SLACK_WEBHOOK_URL or CONTAINERS_TO_MONITOR.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO_ROOT=$(pwd)

MOLO_NEED_DOCKERD=1
if [ -n "${DOCKER_HOST:-}" ] || { command -v docker >/dev/null \
        && docker --host unix:///var/run/docker.sock version >/dev/null 2>&1; }; then
    MOLO_NEED_DOCKERD=0
fi
export MOLO_ENV_PURPOSE=run MOLO_NEED_DOCKERD
source scripts/test-env.sh

if [ -z "${DOCKER_HOST:-}" ]; then
    if [ "$MOLO_NEED_DOCKERD" = 0 ]; then
        DOCKER_HOST=unix:///var/run/docker.sock
    else
        DOCKER_HOST=$MOLO_TEST_DOCKER_HOST
        echo "run: no Docker engine at /var/run/docker.sock; using the private one at $DOCKER_HOST" >&2
        echo "run: try: docker --host $DOCKER_HOST run -d --network none --name demo $MOLO_TEST_IMAGE sleep 600" >&2
    fi
fi
export DOCKER_HOST

STATE_DIR=${STATE_DIR:-$REPO_ROOT/var}
export HEALTH_LOG_DIR=${HEALTH_LOG_DIR:-$STATE_DIR/health-monitor}
export BACKUP_DIR=${BACKUP_DIR:-$STATE_DIR/backups}
export PROMETHEUS_PUSHGATEWAY=${PROMETHEUS_PUSHGATEWAY:-$MOLO_TEST_PUSHGATEWAY}
export INSTANCE_NAME=${INSTANCE_NAME:-$(hostname)}
export PGHOST=${PGHOST:-127.0.0.1}
export PGPORT=${PGPORT:-5432}
export PGUSER=${PGUSER:-postgres}
if [ -z "${PGPASSWORD:-}" ] && [ -z "${PGPASSWORD_FILE:-}" ]; then
    # The local server trusts loopback connections, so any password works.
    export PGPASSWORD=local-demo
fi
mkdir -p "$HEALTH_LOG_DIR" "$BACKUP_DIR"

echo "run: logs and state in $HEALTH_LOG_DIR and $BACKUP_DIR" >&2
echo "run: metrics at $PROMETHEUS_PUSHGATEWAY/metrics; backups at ${BACKUP_SCHEDULE:-0 2 * * *} (${TZ:-UTC})" >&2

# Each worker runs in its own session, so Ctrl-C reaches only this script,
# which then sends one SIGTERM to each.
pids=()
setsid .venv/bin/molochain-workers health-monitor &
pids+=($!)
setsid .venv/bin/molochain-workers backup-worker &
pids+=($!)

stopping=0
stop() {
    stopping=1
    kill -TERM "${pids[@]}" 2>/dev/null || true
}
trap stop INT TERM

status=0
wait -n "${pids[@]}" || status=$?
if [ "$stopping" = 0 ]; then
    echo "run: a worker exited with status $status; stopping the other" >&2
    stop
fi
for pid in "${pids[@]}"; do
    wait "$pid" 2>/dev/null || true
done
# A requested stop ends with 0, as each worker does.
[ "$stopping" = 1 ] && [ "$status" -ge 128 ] && status=0
exit "$status"
