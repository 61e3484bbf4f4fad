#!/usr/bin/env bash
# Start (idempotently) what composer's demo and tests need on this machine:
# Docker Engine with BuildKit, and a distribution registry on loopback.
# Usage: scripts/infra.sh [install|start|stop|status]
set -euo pipefail

STATE_DIR=${COMPOSER_INFRA_DIR:-/var/tmp/composer-infra}
REGISTRY_ADDR=${COMPOSER_TEST_REGISTRY_ADDR:-127.0.0.1:5000}
mkdir -p "$STATE_DIR"

log() { printf 'infra: %s\n' "$*" >&2; }

install_packages() {
  local need=()
  command -v dockerd >/dev/null || need+=(docker.io)
  command -v docker-registry >/dev/null || need+=(docker-registry)
  command -v debootstrap >/dev/null || need+=(debootstrap)
  command -v skopeo >/dev/null || need+=(skopeo)  # an independent OCI client: reads composer export archives, interoperability tests
  if [ ${#need[@]} -gt 0 ]; then
    log "installing ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${need[@]}" >/dev/null
  fi
}

docker_ok() { timeout 5 docker info >/dev/null 2>&1; }

start_docker() {
  if docker_ok; then log "docker engine already running"; return; fi
  log "starting dockerd"
  setsid dockerd --host unix:///var/run/docker.sock \
    >"$STATE_DIR/dockerd.log" 2>&1 < /dev/null &
  echo $! > "$STATE_DIR/dockerd.pid"
  for _ in $(seq 1 60); do docker_ok && { log "dockerd ready"; return; }; sleep 1; done
  log "dockerd did not come up; last log lines:"; tail -n 20 "$STATE_DIR/dockerd.log" >&2
  exit 1
}

registry_ok() { curl -fsS -o /dev/null "http://$REGISTRY_ADDR/v2/" 2>/dev/null; }

start_registry() {
  if registry_ok; then log "registry already answering on $REGISTRY_ADDR"; return; fi
  mkdir -p "$STATE_DIR/registry-data"
  cat > "$STATE_DIR/registry.yml" <<YML
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: $STATE_DIR/registry-data
  delete:
    enabled: true
http:
  addr: $REGISTRY_ADDR
YML
  log "starting registry on $REGISTRY_ADDR"
  setsid docker-registry serve "$STATE_DIR/registry.yml" \
    >"$STATE_DIR/registry.log" 2>&1 < /dev/null &
  echo $! > "$STATE_DIR/registry.pid"
  for _ in $(seq 1 30); do registry_ok && { log "registry ready"; return; }; sleep 0.5; done
  log "registry did not come up"; tail -n 20 "$STATE_DIR/registry.log" >&2
  exit 1
}

stop_all() {
  for svc in registry dockerd; do
    if [ -f "$STATE_DIR/$svc.pid" ]; then
      kill "$(cat "$STATE_DIR/$svc.pid")" 2>/dev/null || true
      rm -f "$STATE_DIR/$svc.pid"
    fi
  done
}

case "${1:-start}" in
  install) install_packages ;;
  start) install_packages; start_docker; start_registry ;;
  stop) stop_all ;;
  status) docker_ok && echo "docker: up" || echo "docker: down"
          registry_ok && echo "registry: up ($REGISTRY_ADDR)" || echo "registry: down" ;;
  *) echo "usage: $0 [install|start|stop|status]" >&2; exit 2 ;;
esac
