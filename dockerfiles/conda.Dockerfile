${syntax_line}# composer-template: conda/2
# Layers locked extra conda packages, then locked extra pip packages, on an upstream image
# whose environment is a conda prefix, pinned by digest.
# Rendered by composer/conda.py: lowercase $-brace placeholders are filled in, the rest is literal.
FROM ${base_ref}

# 1. The locked conda packages into the upstream prefix. Nothing is solved here: the list is
# explicit (exact archives, checked by sha256 on the host before the build). Either
#   - micromamba (the image's own, or the host's bind-mounted from the build context) installs
#     explicit.txt offline from the archives in the bind-mounted conda/pkgs, with its package
#     cache in a temporary directory removed in the same step; or,
#   - where there is no micromamba, py-rattler has already linked the packages on the host for
#     this prefix (paths, entry points and prefix placeholders as they are here), and the step
#     unpacks that tree, refusing any file the upstream already has.
# Either way the installer and the archives stay outside the image.
RUN --mount=type=bind,source=conda,target=/tmp/composer/conda \
    set -e; P=${prefix}; C=/tmp/composer/conda; \
    if [ -f $C/stage.tar ]; then \
      tar -tf $C/stage.tar | while IFS= read -r f; do \
        if [ -e "$P/$f" ] || [ -L "$P/$f" ]; then \
          echo "error: composer: $P/$f is already in the upstream image; upstream files are never replaced" >&2; exit 1; \
        fi; \
      done; \
      tar -x -o -f $C/stage.tar -C "$P"; \
      cat $C/history >> "$P/conda-meta/history"; \
    elif [ -f $C/explicit.txt ]; then \
      T=$(mktemp -d); \
      MAMBA_ROOT_PREFIX="$T" CONDA_PKGS_DIRS="$T/pkgs" \
        ${micromamba} install --yes --offline --no-rc --always-copy --prefix "$P" --file $C/explicit.txt; \
      rm -rf "$T"; \
    fi

# 2. The locked pip packages of the extras, on top, exactly as in pip.Dockerfile: hash-checked
# files fetched on the host, installed offline (--no-index, --network none for the whole build),
# no secret mounted: this step runs the upstream's interpreter.
RUN --mount=type=bind,source=composer-extras.lock,target=/tmp/composer/extras.lock \
    --mount=type=bind,source=composer-dists,target=/tmp/composer/dists \
    --mount=type=bind,source=uv,target=/tmp/composer/uv \
    --mount=type=tmpfs,target=/tmp/composer/uv-cache \
    set -e; \
    if [ -s /tmp/composer/extras.lock ]; then \
      touch /tmp/composer/uv-cache/.start; \
      UV_CACHE_DIR=/tmp/composer/uv-cache UV_LINK_MODE=copy UV_NO_CONFIG=1 \
      /tmp/composer/uv pip install --python ${python} --offline --no-index --find-links /tmp/composer/dists \
          --no-deps --require-hashes ${install_flags} -r /tmp/composer/extras.lock; \
      find ${site} -maxdepth 2 -path '*.dist-info/uv_cache.json' -newer /tmp/composer/uv-cache/.start | \
        while IFS= read -r f; do rm -f "$f"; sed -i '/\.dist-info\/uv_cache\.json,/d' "$(dirname "$f")/RECORD"; done; \
    fi

ENV COMPOSER_SPEC_HASH=${spec_hash}
LABEL org.opencontainers.image.base.name="${base_name}" \
      org.opencontainers.image.base.digest="${base_digest}" \
      dev.composer.spec-hash="${spec_hash}" \
      dev.composer.template="${template}" \
      dev.composer.python="${python_label}" \
      dev.composer.conda-prefix="${prefix_label}" \
      dev.composer.version="${composer_version}"
