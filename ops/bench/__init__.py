"""Benchmarks: each runs real components and prints its figures."""

# The chaos suite's scenarios in the order they run (`propensity bench chaos --only NAME`);
# here, so the CLI can offer them without importing the suite.
CHAOS_SCENARIOS = ("stream-kill", "stream-redis", "kinesis-throttle", "scorer-redis",
                   "scorer-overload", "scorer-overload-hog", "soak")
# The scenarios whose verdicts judge the scorer's latency against the shop's budget on this
# machine's CPU (`make test` runs them by themselves); the others judge what is kept or lost,
# with timeouts sized for a busy machine, and run beside other tests.
LATENCY_SCENARIOS = ("scorer-redis", "scorer-overload", "scorer-overload-hog")
# The soak's length: the full form's is also the least whose memory is judged (a shorter run
# is inside the JVM's and the session state's warm-up); the short form (CI) only shows it.
SOAK_FULL_S = 600
SOAK_SHORT_S = 60
