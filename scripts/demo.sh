#!/usr/bin/env bash
# The main job end to end on a small example (run by `make demo`):
# an upstream "training run" image, its recorded environment, and an explainer
# environment composed on top of it, then resolved and run by digest.
# --update: a rerun may lock newer extras (a new scipy release); the demo name then moves.
set -euo pipefail
cd "$(dirname "$0")/.."
REGISTRY_ADDR=${REGISTRY_ADDR:-127.0.0.1:5000}
BASE_REF=${COMPOSER_BASE_REF:-$REGISTRY_ADDR/bases/python:3.11-bookworm}
export COMPOSER_REGISTRY=${COMPOSER_REGISTRY:-$REGISTRY_ADDR/demo}
step() { printf '\n== %s\n' "$*"; }

step "an upstream training run's image: the base + numpy 1.26.4 and joblib 1.4.2 in a venv"
MODEL=$(scripts/make-upstream.sh "$REGISTRY_ADDR/demo-models/model-a:1" "$BASE_REF" numpy==1.26.4 joblib==1.4.2)
echo "$MODEL"

step "record the environment run TrainFlow/1 ran in (pinned to a digest; packages read from the image)"
python -m composer record --run TrainFlow/1 --image "$MODEL"

step "compose the explainer environment: upstream environment + examples/explainer-extras.txt"
python -m composer build --upstream-run TrainFlow/1 --extra examples/explainer-extras.txt \
  --name 'explainer-{model}-{run_id}' --var model=model-a --run-id ExplainerFlow/1 --update --json | tee /tmp/composer-demo.json
NAME=$(python -c 'import json; print(json.load(open("/tmp/composer-demo.json"))["name"])')

step "at step start: resolve the name to a digest (what @kubernetes(image=composer.ref(name)) gets)"
REF=$(python -m composer ref "$NAME")
echo "$REF"

step "run the step's code in exactly that image"
docker run --rm --network none "$REF" python -c \
  'import numpy, scipy, joblib; print("numpy", numpy.__version__, "(upstream pin) joblib", joblib.__version__, "scipy", scipy.__version__)'

step "the same build again is a cache hit: no BuildKit build starts"
python -m composer build --upstream-run TrainFlow/1 --extra examples/explainer-extras.txt \
  --name 'explainer-{model}-{run_id}' --var model=model-a --run-id ExplainerFlow/1 --update --json

step "the recorded digest manifest (first lines)"
python -m composer show "$NAME" > /tmp/composer-demo-record.json
head -n 25 /tmp/composer-demo-record.json
