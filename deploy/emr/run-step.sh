#!/bin/bash
# EMR step wrapper (terraform/emr.tf). The settings come from spark-env (EMR configuration),
# the Redis connection string from the file the bootstrap wrote.
#   run-step.sh stream   the streaming job; restarted from its checkpoint when it stops,
#                        with backoff, so a crash or a Redis failover does not end the step
#   run-step.sh batch [DATE]  the daily batch for DATE (default: the day that just ended, UTC)
set -euo pipefail
case "${1:-}" in
  stream | batch) ;;
  *)
    echo "usage: run-step.sh stream|batch" >&2
    exit 2
    ;;
esac
set -a
# shellcheck disable=SC1091
source /usr/local/propensity/secret.env
set +a
export PYSPARK_PYTHON=/usr/bin/python3.11

entry() { python3.11 -c "import $1 as m; print(m.__file__)"; }

case "${1:-}" in
  stream)
    attempt=0
    while true; do
      spark-submit --master yarn --deploy-mode client "$(entry streaming.job)" && exit 0
      attempt=$((attempt + 1))
      delay=$((attempt < 6 ? 2 ** attempt : 60))
      echo "streaming job stopped (attempt $attempt); restarting from its checkpoint in ${delay}s" >&2
      sleep "$delay"
    done
    ;;
  batch)
    exec spark-submit --master yarn --deploy-mode client "$(entry batch.job)" \
      --as-of "${2:-$(date -u -d yesterday +%F)}"
    ;;
esac
