"""The Spark session of the spark-redis profile: one per process, shared with Feast's spark
offline store (which takes the active session), with pyspark and Java checked first."""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from typing import TYPE_CHECKING, cast

from seqrec.config import Workspace
from seqrec.errors import SeqrecError

if TYPE_CHECKING:
    import pandas as pd
    from pyspark.sql import DataFrame, SparkSession

INSTALL_HINT = "pip install 'seqrec[spark]'"


def spark_conf(ws: Workspace) -> dict[str, str]:
    """The session settings: the workspace's [spark] section plus what seqrec's queries rely on
    (UTC session time, Arrow transfers to and from pandas)."""
    s = ws.config.spark
    return {
        "spark.master": s.master,
        "spark.app.name": f"seqrec-{ws.config.features.project}",
        "spark.driver.memory": s.driver_memory,
        "spark.sql.shuffle.partitions": str(s.shuffle_partitions),
        "spark.sql.session.timeZone": "UTC",
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        "spark.ui.enabled": "false",
        "spark.ui.showConsoleProgress": "false",
    }


def java_problem(env: Mapping[str, str] | None = None) -> str | None:
    """Why Spark cannot start a JVM here (no ``java`` on JAVA_HOME or PATH), or None."""
    env = os.environ if env is None else env
    home = env.get("JAVA_HOME")
    if home:
        java = os.path.join(home, "bin", "java")
        if os.access(java, os.X_OK):
            return None
        return f"JAVA_HOME={home} has no bin/java"
    if shutil.which("java", path=env.get("PATH", "")) is None:
        return "no `java` on PATH and JAVA_HOME is unset"
    return None


def require_spark(env: Mapping[str, str] | None = None) -> None:
    """A SeqrecError saying what to install when pyspark or Java is missing."""
    try:
        import pyspark  # noqa: F401
    except ImportError:
        raise SeqrecError(
            "the spark-redis profile needs pyspark, which is not installed",
            hint=f"{INSTALL_HINT} (Spark also needs Java 17 or newer)",
        ) from None
    problem = java_problem(env)
    if problem is not None:
        raise SeqrecError(
            f"the spark-redis profile needs Java 17 or newer to run Spark: {problem}",
            hint="install a JDK (e.g. `apt-get install openjdk-17-jre-headless`) or set JAVA_HOME",
        )


def get_session(ws: Workspace) -> SparkSession:
    """The process's Spark session, started with :func:`spark_conf` when there is none."""
    require_spark()
    from pyspark.sql import SparkSession

    active = SparkSession.getActiveSession()
    if active is not None:
        return active
    builder = SparkSession.builder
    for key, value in spark_conf(ws).items():
        builder = builder.config(key, value)
    try:
        session = builder.getOrCreate()
    except Exception as exc:  # the JVM did not start (bad master URL, Java too old, ...)
        first = (str(exc).splitlines() or [type(exc).__name__])[0][:300]
        raise SeqrecError(
            f"cannot start Spark ({first})",
            where=f"[spark] master = {ws.config.spark.master!r}",
            hint="check the [spark] section of seqrec.toml and the Java installation",
        ) from None
    session.sparkContext.setLogLevel("ERROR")
    return session


def stop_session(timeout_s: float = 30.0) -> None:
    """Stop the process's Spark session, if one is running, and let its JVM exit: stopping the
    session alone keeps the JVM (and its heap) for the next one. The JVM pyspark starts exits
    when its standard input closes."""
    try:
        from pyspark import SparkContext
        from pyspark.sql import SparkSession
    except ImportError:
        return
    active = SparkSession.getActiveSession()
    if active is not None:
        active.stop()
    gateway = SparkContext._gateway
    if gateway is None:
        return
    proc = getattr(gateway, "proc", None)
    gateway.shutdown()
    SparkContext._gateway = None
    SparkContext._jvm = None
    if proc is not None and proc.stdin is not None:
        proc.stdin.close()
        try:
            proc.wait(timeout_s)
        except Exception:  # still running: end the JVM this process started
            proc.kill()
            proc.wait()


def to_pandas(df: DataFrame) -> pd.DataFrame:
    """A Spark query's result as pandas (through Arrow); times are naive UTC."""
    return cast("pd.DataFrame", df.toPandas())
