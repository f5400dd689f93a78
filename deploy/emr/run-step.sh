#!/bin/bash
# EMR step wrapper (terraform/emr.tf). The settings come from spark-env (EMR configuration),
# the Redis connection string from the file the bootstrap wrote. The jobs run on the cluster's
# own Spark (/usr/bin/spark-submit, YARN), which also provides pyspark to Python 3.11.
#   run-step.sh stream   the streaming job; restarted from its checkpoint when it stops,
#                        with backoff, so a crash or a Redis failover does not end the step
#   run-step.sh batch [DATE]  the daily batch for DATE (default: the day that just ended, UTC)
#   run-step.sh monitor [DATE]  the live quality of DATE's predictions (same default; no Spark)
#   run-step.sh retrain [DAYS]  the batch over the lake's newest DAYS days (default 28), then a
#                        challenger from them (`propensity retrain`)
set -euo pipefail
case "${1:-}" in
  stream | batch | monitor | retrain) ;;
  *)
    echo "usage: run-step.sh stream|batch|monitor|retrain [DATE|DAYS]" >&2
    exit 2
    ;;
esac
set -a
# shellcheck disable=SC1091
source /usr/local/propensity/secret.env
set +a
export PYSPARK_PYTHON=/usr/bin/python3.11

SPARK_SUBMIT=/usr/bin/spark-submit
# The module's file, found without importing it: pyspark is only importable under spark-submit.
entry() { python3.11 -c "import importlib.util as u; print(u.find_spec('$1').origin)"; }

case "${1:-}" in
  stream)
    attempt=0
    while true; do
      "$SPARK_SUBMIT" --master yarn --deploy-mode client "$(entry propensity.streaming.job)" && exit 0
      attempt=$((attempt + 1))
      delay=$((attempt < 6 ? 2 ** attempt : 60))
      echo "streaming job stopped (attempt $attempt); restarting from its checkpoint in ${delay}s" >&2
      sleep "$delay"
    done
    ;;
  batch)
    exec "$SPARK_SUBMIT" --master yarn --deploy-mode client "$(entry propensity.batch.job)" \
      --as-of "${2:-$(date -u -d yesterday +%F)}"
    ;;
  monitor)
    exec python3.11 -m propensity.ops.cli monitor --day "${2:-$(date -u -d yesterday +%F)}"
    ;;
  retrain)
    exec "$SPARK_SUBMIT" --master yarn --deploy-mode client "$(entry propensity.ops.cli)" retrain \
      --days "${2:-28}"
    ;;
esac
