"""Training: point-in-time training sets (dataset.py), the LightGBM model and its baselines
(train.py), retraining a challenger from the lake (retrain.py), metrics with session-bootstrap
intervals (metrics.py), behavioural checks through the streaming fold (checks.py), the report
and model card (report.py), evaluation of a stored model on other data (evaluate.py).

A job on floor 3 of the package (propensity/__init__.py): it imports the core and Feast's
definitions only, never another job or the operator's layer. It reads what the daily batch
published; ops/pipelines.py runs the batch first."""
