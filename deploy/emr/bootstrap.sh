#!/bin/bash
# EMR bootstrap action (every node of the streaming and batch clusters; terraform/emr.tf):
# Python 3.11, the propensity wheel with its jobs extra (every dependency pinned by
# constraints.txt), the step wrapper, and the Redis connection string from Secrets Manager for
# the step's user only.
# Arguments: <artifacts s3 uri> <redis secret arn> <region>
set -euo pipefail
artifacts="$1" secret_arn="$2" region="$3"

sudo dnf install -y -q python3.11 python3.11-pip
work=$(mktemp -d)
aws s3 cp --recursive --quiet "$artifacts/" "$work/"
wheel=$(echo "$work"/propensity-*.whl)
# With the jobs extra (Spark, training); the bare wheel is the scorer's.
sudo python3.11 -m pip install -q -c "$work/constraints.txt" "${wheel}[jobs]"

sudo install -d -m 755 /usr/local/propensity
sudo install -m 755 "$work/run-step.sh" /usr/local/propensity/run-step.sh
redis=$(aws secretsmanager get-secret-value --region "$region" --secret-id "$secret_arn" \
  --query SecretString --output text)
printf 'PROPENSITY_REDIS=%q\n' "$redis" | sudo tee /usr/local/propensity/secret.env >/dev/null
sudo chown hadoop:hadoop /usr/local/propensity/secret.env
sudo chmod 600 /usr/local/propensity/secret.env
rm -rf "$work"
