"""Errors of a batch run a user can act on (kept free of Spark, so the CLI imports it fast):
`BatchError` and its kinds (checks.ValidationError), reported in one line by the EMR step's
entry point (job.py) and the CLI alike."""


class BatchError(RuntimeError):
    """The run cannot start (say, an empty lake or a bad date range)."""
