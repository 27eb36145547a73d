#!/usr/bin/env bash
# Install and start, idempotently, everything the test suite talks to: a
# private dockerd with a tiny busybox image, PostgreSQL, a Pushgateway and a
# Prometheus on loopback ports. Source it, or run it to print the settings.
#
# Everything lives under $MOLO_TEST_ROOT (default /tmp/molochain-test). The
# private dockerd has no bridge, no iptables rules and no masquerading, and
# every test container runs with --network none.
set -euo pipefail

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
MOLO_TEST_ROOT=${MOLO_TEST_ROOT:-/tmp/molochain-test}
MOLO_TEST_IMAGE=${MOLO_TEST_IMAGE:-molochain-test/busybox:latest}
MOLO_TEST_BASE_IMAGE=${MOLO_TEST_BASE_IMAGE:-molochain-test/bookworm-python:latest}
MOLO_TEST_PUSHGATEWAY_PORT=${MOLO_TEST_PUSHGATEWAY_PORT:-19091}
MOLO_TEST_PROMETHEUS_PORT=${MOLO_TEST_PROMETHEUS_PORT:-19090}
VENV=${VENV:-$REPO_ROOT/.venv}
PYTHON=${PYTHON:-python3}

log() { printf 'test-env: %s\n' "$*" >&2; }

APT_PACKAGES=(curl docker.io busybox-static prometheus-pushgateway prometheus docker-compose
              postgresql postgresql-client debootstrap)

# What scripts/run.sh needs: no linters, no Prometheus, no image builds.
RUN_APT_PACKAGES=(curl docker.io busybox-static prometheus-pushgateway postgresql
                  postgresql-client)

# Arguments: the Debian packages to have installed.
install_packages() {
    local missing=()
    for package in "$@"; do
        dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" \
            || missing+=("$package")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        log "installing ${missing[*]}"
        apt-get update -q >/dev/null
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
            "${missing[@]}" >/dev/null
    fi
}

# Arguments: "test" to add the test dependencies, "run" for the workers only.
setup_venv() {
    local purpose=$1
    if [ ! -x "$VENV/bin/python" ]; then
        log "creating $VENV"
        "$PYTHON" -m venv "$VENV"
    fi
    local hash
    hash=$(sha256sum "$REPO_ROOT/pyproject.toml" | cut -c1-16)
    # A test install includes everything a run needs.
    if [ -f "$VENV/.installed-test-$hash" ] || [ -f "$VENV/.installed-$purpose-$hash" ]; then
        return 0
    fi
    local target="$REPO_ROOT"
    if [ "$purpose" = test ]; then
        target="$REPO_ROOT[test]"
        log "installing the project and its test dependencies"
    else
        log "installing the project"
    fi
    "$VENV/bin/pip" install -q --upgrade pip >/dev/null 2>&1 || true
    # pip's build warnings are noise here; its output is shown only on failure.
    if ! "$VENV/bin/pip" install -q -e "$target" >"$VENV/pip-install.log" 2>&1; then
        cat "$VENV/pip-install.log" >&2
        return 1
    fi
    rm -f "$VENV"/.installed-*
    touch "$VENV/.installed-$purpose-$hash"
}

# Start a dockerd on its own socket, data root and exec root. Arguments: the
# directory to keep it in; extra dockerd flags follow.
start_dockerd() {
    local dir=$1; shift
    local socket="$dir/docker.sock"
    mkdir -p "$dir"
    if DOCKER_HOST="unix://$socket" docker version >/dev/null 2>&1; then
        return 0
    fi
    if [ -f "$dir/docker.pid" ] && kill -0 "$(cat "$dir/docker.pid")" 2>/dev/null; then
        kill "$(cat "$dir/docker.pid")" || true
        sleep 1
    fi
    rm -f "$socket" "$dir/docker.pid"
    log "starting dockerd at $socket"
    setsid dockerd --host "unix://$socket" --data-root "$dir/data" --exec-root "$dir/exec" \
        --pidfile "$dir/docker.pid" --bridge=none --iptables=false --ip-masq=false \
        --ip6tables=false "$@" >"$dir/dockerd.log" 2>&1 < /dev/null &
    for _ in $(seq 1 60); do
        DOCKER_HOST="unix://$socket" docker version >/dev/null 2>&1 && return 0
        sleep 0.5
    done
    log "dockerd did not start; see $dir/dockerd.log"
    tail -20 "$dir/dockerd.log" >&2
    return 1
}

# Build the busybox test image with docker import. Arguments: socket, image.
build_test_image() {
    local socket=$1 image=$2
    if DOCKER_HOST="unix://$socket" docker image inspect "$image" >/dev/null 2>&1; then
        return 0
    fi
    log "importing $image"
    local rootfs
    rootfs=$(mktemp -d)
    mkdir -p "$rootfs/bin" "$rootfs/tmp" "$rootfs/etc" "$rootfs/proc" "$rootfs/sys" "$rootfs/dev"
    cp /bin/busybox "$rootfs/bin/busybox"
    for applet in $(/bin/busybox --list); do
        [ "$applet" = busybox ] || ln -s busybox "$rootfs/bin/$applet"
    done
    chmod 1777 "$rootfs/tmp"
    echo "root:x:0:0:root:/:/bin/sh" > "$rootfs/etc/passwd"
    tar -C "$rootfs" -c . | DOCKER_HOST="unix://$socket" docker import \
        --change 'ENV PATH=/bin' --change 'CMD ["/bin/sh"]' - "$image" >/dev/null
    rm -rf "$rootfs"
}

# Build a minimal bookworm image with Python, PostgreSQL's client and tini, so
# the image build test needs no registry: debootstrap fetches only Debian
# packages. Arguments: socket, image. Kept on the private dockerd across runs.
build_base_image() {
    local socket=$1 image=$2
    if DOCKER_HOST="unix://$socket" docker image inspect "$image" >/dev/null 2>&1; then
        return 0
    fi
    log "building $image with debootstrap"
    local rootfs
    rootfs=$(mktemp -d)
    if ! debootstrap --variant=minbase --include=python3,python3-venv,postgresql-client,tini \
            bookworm "$rootfs" http://deb.debian.org/debian >"$MOLO_TEST_ROOT/debootstrap.log" 2>&1; then
        log "debootstrap failed; see $MOLO_TEST_ROOT/debootstrap.log"
        rm -rf "$rootfs"
        return 1
    fi
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
    tar -C "$rootfs" -c . | DOCKER_HOST="unix://$socket" docker import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'CMD ["/bin/bash"]' - "$image" >/dev/null
    rm -rf "$rootfs"
}

start_postgres() {
    if pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then
        return 0
    fi
    log "starting PostgreSQL"
    local version
    version=$(ls /etc/postgresql 2>/dev/null | sort -V | tail -1)
    if [ -z "$version" ]; then
        log "no PostgreSQL cluster found under /etc/postgresql"
        return 1
    fi
    pg_ctlcluster --skip-systemctl-redirect "$version" main start
    for _ in $(seq 1 30); do
        pg_isready -q -h 127.0.0.1 -p 5432 && return 0
        sleep 0.5
    done
    return 1
}

start_pushgateway() {
    local port=$1 dir="$MOLO_TEST_ROOT/pushgateway"
    if curl -fsS "http://127.0.0.1:$port/-/ready" >/dev/null 2>&1; then
        return 0
    fi
    mkdir -p "$dir"
    log "starting Pushgateway on 127.0.0.1:$port"
    setsid prometheus-pushgateway --web.listen-address="127.0.0.1:$port" --web.enable-admin-api \
        >"$dir/pushgateway.log" 2>&1 < /dev/null &
    echo $! > "$dir/pushgateway.pid"
    for _ in $(seq 1 40); do
        curl -fsS "http://127.0.0.1:$port/-/ready" >/dev/null 2>&1 && return 0
        sleep 0.25
    done
    log "Pushgateway did not start; see $dir/pushgateway.log"
    return 1
}

start_prometheus() {
    local port=$1 gateway_port=$2 dir="$MOLO_TEST_ROOT/prometheus"
    if curl -fsS "http://127.0.0.1:$port/-/ready" >/dev/null 2>&1; then
        return 0
    fi
    mkdir -p "$dir/data"
    cat > "$dir/prometheus.yml" <<YAML
global:
  scrape_interval: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: pushgateway
    honor_labels: true
    static_configs:
      - targets: ["127.0.0.1:$gateway_port"]
YAML
    log "starting Prometheus on 127.0.0.1:$port"
    setsid prometheus --config.file="$dir/prometheus.yml" --storage.tsdb.path="$dir/data" \
        --web.listen-address="127.0.0.1:$port" >"$dir/prometheus.log" 2>&1 < /dev/null &
    echo $! > "$dir/prometheus.pid"
    for _ in $(seq 1 60); do
        curl -fsS "http://127.0.0.1:$port/-/ready" >/dev/null 2>&1 && return 0
        sleep 0.5
    done
    log "Prometheus did not start; see $dir/prometheus.log"
    return 1
}

# MOLO_ENV_PURPOSE=run (set by scripts/run.sh) starts only what the workers
# need; MOLO_NEED_DOCKERD=0 skips the private dockerd too.
main() {
    if [ "${MOLO_ENV_PURPOSE:-test}" = run ]; then
        install_packages "${RUN_APT_PACKAGES[@]}"
        setup_venv run
        if [ "${MOLO_NEED_DOCKERD:-1}" = 1 ]; then
            start_dockerd "$MOLO_TEST_ROOT/docker"
            build_test_image "$MOLO_TEST_ROOT/docker/docker.sock" "$MOLO_TEST_IMAGE"
        fi
        start_postgres
        start_pushgateway "$MOLO_TEST_PUSHGATEWAY_PORT"
        export MOLO_TEST_ROOT MOLO_TEST_IMAGE
        export MOLO_TEST_DOCKER_HOST="unix://$MOLO_TEST_ROOT/docker/docker.sock"
        export MOLO_TEST_PUSHGATEWAY="http://127.0.0.1:$MOLO_TEST_PUSHGATEWAY_PORT"
        return 0
    fi
    install_packages "${APT_PACKAGES[@]}"
    setup_venv test
    start_dockerd "$MOLO_TEST_ROOT/docker"
    build_test_image "$MOLO_TEST_ROOT/docker/docker.sock" "$MOLO_TEST_IMAGE"
    # Only the image build tests need it, so the other tests still run without it.
    build_base_image "$MOLO_TEST_ROOT/docker/docker.sock" "$MOLO_TEST_BASE_IMAGE" \
        || log "no $MOLO_TEST_BASE_IMAGE: the image build tests will fail"
    start_postgres
    start_pushgateway "$MOLO_TEST_PUSHGATEWAY_PORT"
    start_prometheus "$MOLO_TEST_PROMETHEUS_PORT" "$MOLO_TEST_PUSHGATEWAY_PORT"

    export MOLO_TEST_ROOT MOLO_TEST_IMAGE MOLO_TEST_BASE_IMAGE
    export MOLO_TEST_DOCKER_HOST="unix://$MOLO_TEST_ROOT/docker/docker.sock"
    export MOLO_TEST_PUSHGATEWAY="http://127.0.0.1:$MOLO_TEST_PUSHGATEWAY_PORT"
    export MOLO_TEST_PROMETHEUS="http://127.0.0.1:$MOLO_TEST_PROMETHEUS_PORT"
    export MOLO_TEST_PGHOST=127.0.0.1 MOLO_TEST_PGPORT=5432
    # Plain pytest runs read this file, so the services need starting only once.
    env | grep '^MOLO_TEST_' | sort > "$MOLO_TEST_ROOT/env"
}

main
if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    env | grep '^MOLO_TEST_' | sort
fi
