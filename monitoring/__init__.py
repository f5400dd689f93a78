"""Watching the model in production, from the scorer's prediction log and the event lake
(a daily job; no Spark: it streams the log in Arrow batches into fixed-size counts).
A job on floor 3 of the package (propensity/__init__.py): it imports the core and Feast's
definitions only, never another job or the operator's layer.

- outcomes.py  the log's rows of some days, joined with whether their session purchased after
- live.py      `propensity monitor --day D`: live quality per model version and variant,
               stored per day and published to CloudWatch
- ab.py        `propensity monitor ab`: conversion per variant, the test, the sample size
"""
