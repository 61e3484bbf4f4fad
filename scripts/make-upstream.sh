#!/usr/bin/env bash
# Make an "upstream model" image for the demo and tests: the local Python base
# plus a virtualenv with the given pinned packages, as a training flow's image
# would be. Built with BuildKit; the CA bundle goes in as a secret mount only.
# Usage: scripts/make-upstream.sh REF BASE_REF PKG==VER [PKG==VER ...]
set -euo pipefail
[ $# -ge 3 ] || { echo "usage: $0 REF BASE_REF PKG==VER..." >&2; exit 2; }
REF=$1; BASE=$2; shift 2
CA=${COMPOSER_CA_BUNDLE:-${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}}

# Docker CLIs from 23 on need buildx for BuildKit; Debian's 20.10 CLI has it built in.
DOCKER=docker
if ! docker buildx version >/dev/null 2>&1 && [ -x /usr/bin/docker ]; then DOCKER=/usr/bin/docker; fi

ctx=$(mktemp -d); trap 'rm -rf "$ctx"' EXIT
printf '%s\n' "$@" > "$ctx/requirements.txt"
cat > "$ctx/Dockerfile" <<DOCKERFILE
FROM $BASE
RUN --mount=type=bind,source=requirements.txt,target=/tmp/requirements.txt \\
    --mount=type=secret,id=ca \\
    python3 -m venv /opt/venv && \\
    if [ -f /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca; fi && \\
    /opt/venv/bin/pip install --no-cache-dir --disable-pip-version-check -q -r /tmp/requirements.txt
ENV PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin VIRTUAL_ENV=/opt/venv
DOCKERFILE
secret=()
[ -f "$CA" ] && secret=(--secret "id=ca,src=$CA")
DOCKER_BUILDKIT=1 "$DOCKER" build -q "${secret[@]}" -t "$REF" "$ctx" >/dev/null
"$DOCKER" push -q "$REF" >/dev/null 2>&1 || "$DOCKER" push "$REF" >/dev/null
echo "$REF"
