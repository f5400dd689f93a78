"""Training: point-in-time training sets (dataset.py), the LightGBM model and its baselines
(train.py), metrics with session-bootstrap intervals (metrics.py), behavioural checks through
the streaming fold (checks.py), the report and model card (report.py), evaluation of a stored
model on other data (evaluate.py)."""
