#!/usr/bin/env bash
# Make a Python base image offline (no Docker Hub): debootstrap a minimal
# Debian with python3, import it into Docker and push it to the local registry.
# Idempotent: an image already in the registry under that tag is kept.
# Usage: scripts/make-base.sh [REF]   (default 127.0.0.1:5000/bases/python:3.11-bookworm)
set -euo pipefail

REF=${1:-${COMPOSER_BASE_REF:-127.0.0.1:5000/bases/python:3.11-bookworm}}
SUITE=${SUITE:-bookworm}
STATE_DIR=${COMPOSER_INFRA_DIR:-/var/tmp/composer-infra}
ROOTFS_TAR="$STATE_DIR/rootfs-$SUITE.tar"

log() { printf 'make-base: %s\n' "$*" >&2; }

host_path=${REF#*/}; host=${REF%%/*}
repo=${host_path%:*}; tag=${host_path##*:}
if curl -fsS -o /dev/null -H 'Accept: application/vnd.docker.distribution.manifest.v2+json' \
     "http://$host/v2/$repo/manifests/$tag" 2>/dev/null; then
  log "$REF already in the registry"
  exit 0
fi

if [ ! -s "$ROOTFS_TAR" ]; then
  dir=$(mktemp -d "$STATE_DIR/rootfs.XXXXXX")
  log "debootstrap $SUITE into $dir (about a minute)"
  debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
    "$SUITE" "$dir" >"$STATE_DIR/debootstrap.log" 2>&1 \
    || { tail -n 20 "$STATE_DIR/debootstrap.log" >&2; exit 1; }
  # Drop caches that only make the image bigger.
  rm -rf "$dir"/var/cache/apt/archives/*.deb "$dir"/var/lib/apt/lists/*
  tar --numeric-owner -C "$dir" -cf "$ROOTFS_TAR.tmp" .
  mv "$ROOTFS_TAR.tmp" "$ROOTFS_TAR"
  rm -rf "$dir"
fi

log "importing as $REF"
docker import \
  -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  -c 'ENV LANG=C.UTF-8' \
  -c 'CMD ["python3"]' \
  "$ROOTFS_TAR" "$REF" >/dev/null
docker push "$REF" >/dev/null
log "pushed $REF"
