"""Benchmarks: each runs real components and prints its figures."""

# The chaos suite's scenarios in the order they run (`propensity bench chaos --only NAME`);
# here, so the CLI can offer them without importing the suite.
CHAOS_SCENARIOS = ("stream-kill", "stream-redis", "kinesis-throttle", "scorer-redis",
                   "scorer-overload", "soak")
