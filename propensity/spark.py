"""The SparkSession every job uses: local mode here, the cluster's settings on EMR.

Locally Spark runs in `local[2]`; Python workers must run the same
interpreter as the driver, or they fail to connect back. State lives in RocksDB.
"""

from __future__ import annotations

import gc
import os
import sys

from pyspark.sql import SparkSession

ROCKSDB = "org.apache.spark.sql.execution.streaming.state.RocksDBStateStoreProvider"
# The stateful operator's state server, as Spark 4.1+ and Spark 4.0 (the EMR runtime) name it:
# it warns on every lookup of a session not yet in state, that is on every new session.
STATE_SERVERS = tuple(f"org.apache.spark.sql.execution.python.streaming.TransformWithStateIn"
                      f"{name}StateServer" for name in ("PySpark", "Pandas"))


DRIVER_MEMORY = "2g"
EMBEDDED_PARTITIONS_PER_CORE = 2
_heap_frozen = False


def freeze_worker_heap() -> None:
    """Once per Python worker, after its first task: every object alive then (the modules
    Feast, pandas and pyarrow import, the writer's clients) leaves the garbage collector's
    generations for good. PySpark's daemon runs a full `gc.collect()` after every task of a
    reused worker, and walking those objects each time was 7% of the streaming job's Python
    CPU (bench stream --profile). Objects made later are collected as before; call it only
    once, so that a task's own garbage is never frozen."""
    global _heap_frozen
    if not _heap_frozen:
        _heap_frozen = True
        gc.freeze()


def spark_session(app: str, master: str, long_running: bool = False) -> SparkSession:
    """`master` "" keeps what spark-submit configured (EMR); "local[2]" runs embedded.
    `long_running` (the streaming job) gives an embedded JVM its whole heap from the start,
    touched, as long-running JVMs are run: its memory is then flat instead of stepping up
    each time the collector decides to grow the heap (by 180 MB at once, seen at minute 6)."""
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    builder = SparkSession.builder.appName(app)
    if master:
        # Embedded: bind the driver to loopback only.
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
        builder = (builder.master(master).config("spark.driver.memory", DRIVER_MEMORY)
                   .config("spark.driver.host", "127.0.0.1")
                   .config("spark.driver.bindAddress", "127.0.0.1"))
        if long_running:
            builder = builder.config("spark.driver.extraJavaOptions",
                                     f"-Xms{DRIVER_MEMORY} -XX:+AlwaysPreTouch")
    spark = (
        builder
        # Batch shuffles are sized from their data: adaptive execution coalesces the
        # shuffle partitions to what the rows need. (Streaming queries run without it; the
        # streaming job sets its own state partitions, kept by its checkpoint.)
        .config("spark.sql.adaptive.enabled", "true")
        .config("spark.sql.adaptive.coalescePartitions.enabled", "true")
        .config("spark.sql.streaming.stateStore.providerClass", ROCKSDB)
        .config("spark.sql.streaming.stateStore.rocksdb.changelogCheckpointing.enabled", "true")
        .config("spark.sql.session.timeZone", "UTC")
        # Nullable longs (category ids) reach pandas as Int64, not float64 that rounds them.
        .config("spark.sql.execution.pythonUDF.pandas.preferIntExtensionDtype", "true")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .getOrCreate()
    )
    if master:
        # Embedded data is a laptop's: Spark's 200 shuffle partitions cost more in task
        # overhead than the work (the training set of two REES46 months: 94 s with 200, 44 s
        # with 4, 2026-12-06), as Spark's own test sessions use 5. Twice the cores it has keeps
        # both busy; adaptive execution still coalesces. On EMR the cluster's settings hold.
        spark.conf.set("spark.sql.shuffle.partitions",
                       str(EMBEDDED_PARTITIONS_PER_CORE * spark.sparkContext.defaultParallelism))
    spark.sparkContext.setLogLevel("WARN")
    for logger in STATE_SERVERS:
        _set_log_level(spark, logger, "ERROR")
    return spark


def _set_log_level(spark: SparkSession, logger: str, level: str) -> None:
    jvm = spark.sparkContext._jvm
    jvm.org.apache.logging.log4j.core.config.Configurator.setLevel(
        logger, jvm.org.apache.logging.log4j.Level.valueOf(level))
