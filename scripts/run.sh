#!/usr/bin/env bash
# Set up the project and run the health monitor and the backup worker against
# the local Docker engine, in the foreground, until Ctrl-C.
#
# The engine is $DOCKER_HOST if set, else /var/run/docker.sock if it answers,
# else the private loopback-only dockerd that scripts/test-env.sh starts. The
# same script starts a Pushgateway (127.0.0.1:19091) and PostgreSQL for the
# workers to report to and back up. Every other setting of the README may be
# exported before running this, e.g. SLACK_WEBHOOK_URL or CONTAINERS_TO_MONITOR.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO_ROOT=$(pwd)

source scripts/test-env.sh

if [ -z "${DOCKER_HOST:-}" ]; then
    if docker --host unix:///var/run/docker.sock version >/dev/null 2>&1; then
        DOCKER_HOST=unix:///var/run/docker.sock
    else
        DOCKER_HOST=$MOLO_TEST_DOCKER_HOST
        echo "run: no Docker engine at /var/run/docker.sock; using the private one at $DOCKER_HOST" >&2
        echo "run: try it with: docker --host $DOCKER_HOST run -d --network none --name demo $MOLO_TEST_IMAGE sleep 600" >&2
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

pids=()
stop() {
    trap - INT TERM
    kill -TERM "${pids[@]}" 2>/dev/null || true
    wait "${pids[@]}" 2>/dev/null || true
}
trap stop INT TERM

echo "run: logs in $HEALTH_LOG_DIR and $BACKUP_DIR; metrics at $PROMETHEUS_PUSHGATEWAY/metrics" >&2
.venv/bin/molochain-workers health-monitor &
pids+=($!)
.venv/bin/molochain-workers backup-worker &
pids+=($!)
wait -n "${pids[@]}" || status=$?
stop
exit "${status:-0}"
