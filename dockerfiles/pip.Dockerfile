${syntax_line}# composer-template: pip/2
# Layers locked extra packages on an upstream image, pinned by digest.
# Rendered by composer/dockerfile.py: lowercase $-brace placeholders are filled in, the rest is literal.
FROM ${base_ref}

# One layer with exactly the locked extras: hash-checked, no dependency
# resolution at build time (--no-deps), so upstream packages never move.
# This step runs the upstream's own interpreter, i.e. the upstream's code, so it gets
# nothing to steal and nowhere to send it: the files were fetched and hash-checked on the
# host (composer-dists/), uv installs them offline (--offline --no-index), the whole build
# runs with --network none, no secret is mounted, and uv's cache is a tmpfs of this step.
# uv marks wheels installed from local files with a timestamped uv_cache.json: removed (and
# from RECORD), so the layer holds what an index install (and the daemonless builder) gives.
RUN --mount=type=bind,source=composer-extras.lock,target=/tmp/composer/extras.lock \
    --mount=type=bind,source=composer-dists,target=/tmp/composer/dists \
    --mount=type=bind,source=uv,target=/tmp/composer/uv \
    --mount=type=tmpfs,target=/tmp/composer/uv-cache \
    set -e; touch /tmp/composer/uv-cache/.start; \
    UV_CACHE_DIR=/tmp/composer/uv-cache UV_LINK_MODE=copy UV_NO_CONFIG=1 \
    /tmp/composer/uv pip install --python ${python} --offline --no-index --find-links /tmp/composer/dists \
        --no-deps --require-hashes ${install_flags} -r /tmp/composer/extras.lock; \
    find ${site} -maxdepth 2 -path '*.dist-info/uv_cache.json' -newer /tmp/composer/uv-cache/.start | \
      while IFS= read -r f; do rm -f "$f"; sed -i '/\.dist-info\/uv_cache\.json,/d' "$(dirname "$f")/RECORD"; done

ENV COMPOSER_SPEC_HASH=${spec_hash}
LABEL org.opencontainers.image.base.name="${base_name}" \
      org.opencontainers.image.base.digest="${base_digest}" \
      dev.composer.spec-hash="${spec_hash}" \
      dev.composer.template="${template}" \
      dev.composer.version="${composer_version}"
