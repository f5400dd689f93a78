"""Errors of a batch run a user can act on (kept free of Spark, so the CLI imports it fast)."""


class BatchError(RuntimeError):
    """The run cannot start (say, an empty lake or a bad date range)."""
