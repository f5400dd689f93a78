#!/bin/bash
# EMR bootstrap action (every node of the streaming and batch clusters; terraform/emr.tf):
# Python 3.11, the propensity wheel with what its jobs need beside Spark (every version pinned
# by constraints.txt), the step wrapper, and the Redis connection string from Secrets Manager
# for the step's user only.
#
# Spark itself is the EMR release's (deploy/emr/runtime.json: emr-spark-8.0.0, Spark 4.0.2):
# pyspark is NOT installed here, so the steps run on exactly the Spark the release ships and
# the tests ran on. What else the jobs need on the cluster, all there without packages:
# - the Kinesis source: the project's own Python data source (streaming/kinesis_source.py,
#   boto3, in the wheel); no JVM connector or extra jar;
# - S3: Spark's own paths (the streaming checkpoint: offsets, commits, state) are s3:// URIs
#   through EMRFS, EMR's S3 file system; the lake, archive and quarantine objects go through
#   pyarrow and boto3 with the instance role;
# - state: RocksDBStateStoreProvider, which ships with Spark (set by propensity/spark.py);
# - checkpoints on S3: PROPENSITY_CHECKPOINT_DIR (terraform/emr.tf's spark-env).
# Arguments: <artifacts s3 uri> <redis secret arn> <region>
set -euo pipefail
artifacts="$1" secret_arn="$2" region="$3"

sudo dnf install -y -q python3.11 python3.11-pip
work=$(mktemp -d)
aws s3 cp --recursive --quiet "$artifacts/" "$work/"
wheel=$(echo "$work"/propensity-*.whl)
# The wheel, then its dependencies and its jobs extra less pyspark (requirements.txt, made
# from pyproject.toml by `make package`).
sudo python3.11 -m pip install -q --no-deps "$wheel"
sudo python3.11 -m pip install -q -c "$work/constraints.txt" -r "$work/requirements.txt"
if python3.11 -m pip show -q pyspark 2>/dev/null; then
  echo "bootstrap: a pip-installed pyspark would shadow the cluster's Spark" >&2
  exit 1
fi

sudo install -d -m 755 /usr/local/propensity
sudo install -m 755 "$work/run-step.sh" /usr/local/propensity/run-step.sh
redis=$(aws secretsmanager get-secret-value --region "$region" --secret-id "$secret_arn" \
  --query SecretString --output text)
printf 'PROPENSITY_REDIS=%q\n' "$redis" | sudo tee /usr/local/propensity/secret.env >/dev/null
sudo chown hadoop:hadoop /usr/local/propensity/secret.env
sudo chmod 600 /usr/local/propensity/secret.env
rm -rf "$work"
