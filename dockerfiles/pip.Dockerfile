${syntax_line}# composer-template: pip/1
# Layers locked extra packages on an upstream image, pinned by digest.
# Rendered by composer/dockerfile.py: lowercase $-brace placeholders are filled in, the rest is literal.
FROM ${base_ref}

# One layer with exactly the locked extras: hash-checked, no dependency
# resolution at build time (--no-deps), so upstream packages never move.
# uv comes from the build context and the CA bundle and index URL arrive as
# secrets: none of them ends up in the image.
RUN --mount=type=bind,source=composer-extras.lock,target=/tmp/composer/extras.lock \
    --mount=type=bind,source=uv,target=/tmp/composer/uv \
    --mount=type=cache,target=/tmp/composer/uv-cache,id=composer-uv-cache \
    --mount=type=secret,id=ca \
    --mount=type=secret,id=index_url \
    set -e; \
    if [ -f /run/secrets/ca ]; then export SSL_CERT_FILE=/run/secrets/ca; fi; \
    if [ -f /run/secrets/index_url ]; then UV_INDEX_URL="$(cat /run/secrets/index_url)"; export UV_INDEX_URL; fi; \
    UV_CACHE_DIR=/tmp/composer/uv-cache UV_LINK_MODE=copy UV_NO_CONFIG=1 \
    /tmp/composer/uv pip install --python ${python} --no-deps --require-hashes ${install_flags} \
        -r /tmp/composer/extras.lock

ENV COMPOSER_SPEC_HASH=${spec_hash}
LABEL org.opencontainers.image.base.name="${base_name}" \
      org.opencontainers.image.base.digest="${base_digest}" \
      dev.composer.spec-hash="${spec_hash}" \
      dev.composer.template="${template}" \
      dev.composer.version="${composer_version}"
