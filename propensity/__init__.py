"""propensity: real-time purchase-intent scoring for e-commerce.

One installed package in floors, each importing only the floors below it (the repository keeps
one folder per floor's part; pyproject.toml maps them under this name):

1. the core, this folder: settings, the event contract, the feature definitions, the model and
   its store, rollout, the prediction log's format, quality, drift and experiment statistics,
   the lake's layout, its compaction and retention, AWS, Kinesis and Spark helpers. No Feast,
   FastAPI or tooling.
2. `propensity.feature_repo` (feature_repo/): Feast's entities, views and the one adapter to
   Feast's internals.
3. the jobs and the scorer, none importing another: `propensity.streaming`,
   `propensity.batch`, `propensity.training`, `propensity.monitoring`, `propensity.privacy`,
   `propensity.serving`.
4. `propensity.ops` (ops/): the operator's command line and the local tooling.
"""
