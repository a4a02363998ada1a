"""Starting a Spark session for ``tandem build --engine spark`` (see docs/operations.md, "Spark").

pyspark is an optional dependency (the ``spark`` extra) and needs Java 17 or newer;
:func:`spark_problem` says in one line what is missing, before anything is started.
"""

from __future__ import annotations

import atexit
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["DEFAULT_MASTER", "spark_problem", "start_spark"]

#: Master of the embedded session: a local Spark with two worker threads.
DEFAULT_MASTER = "local[2]"


def _java() -> str | None:
    home = os.environ.get("JAVA_HOME")
    if home and (Path(home) / "bin" / "java").is_file():
        return str(Path(home) / "bin" / "java")
    return shutil.which("java")


def spark_problem() -> str | None:
    """None when pyspark and a Java runtime are there; otherwise what to install, in one line."""
    if importlib.util.find_spec("pyspark") is None:
        return ("the spark engine needs pyspark: pip install 'tandem[spark]' (or pip install pyspark), "
                "or build with --engine local")
    java = _java()
    if java is None:
        return "the spark engine needs Java 17 or newer: install a JDK (e.g. openjdk-17-jre) or set JAVA_HOME"
    try:
        subprocess.run([java, "-version"], capture_output=True, timeout=60, check=True)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"the spark engine needs a working Java runtime; '{java} -version' failed: {exc}"
    return None


def start_spark(master: str = DEFAULT_MASTER, *, driver_memory: str = "2g", app_name: str = "tandem-build",
                local_dir: str | Path | None = None, conf: dict[str, str] | None = None) -> Any:
    """A SparkSession on ``master``; the UI is off, a local master binds to the loopback interface
    and Python workers run this interpreter (so they import the same ``tandem``).

    ``local_dir`` is Spark's scratch folder (default: a new folder under the system temp dir).
    ``conf`` adds or overrides settings (``spark.executor.memory``, ...). On a cluster, use
    ``spark-submit`` instead and these settings come from its command line (docs/operations.md).
    """
    problem = spark_problem()
    if problem is not None:
        raise RuntimeError(problem)
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    from pyspark.sql import SparkSession

    if os.environ.get("PYSPARK_GATEWAY_PORT") and SparkSession.getActiveSession() is None \
            and "PYSPARK_SUBMIT_ARGS" not in os.environ:
        # launched by spark-submit: master, memory and the rest come from its command line
        spark = SparkSession.builder.appName(app_name).config("spark.sql.session.timeZone", "UTC").getOrCreate()
        spark.sparkContext.setLogLevel("WARN")
        return spark
    local = master.startswith("local")
    if local:
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    scratch = str(local_dir) if local_dir is not None else tempfile.mkdtemp(prefix="tandem-spark-")
    if local_dir is None:
        atexit.register(shutil.rmtree, scratch, True)  # shuffle and cache files of this session
    builder = (SparkSession.builder.master(master).appName(app_name)
               .config("spark.ui.enabled", "false")
               .config("spark.driver.memory", driver_memory)
               .config("spark.local.dir", scratch)
               .config("spark.sql.session.timeZone", "UTC")
               .config("spark.sql.shuffle.partitions", "8" if local else "200")
               .config("spark.sql.adaptive.enabled", "true")
               .config("spark.python.worker.reuse", "true")
               .config("spark.ui.showConsoleProgress", "false")
               # the engine collects the item-CF neighbour table and the cleaned interactions to the
               # driver by design (the bundle is written there); Spark's default 1 GiB guard stopped
               # item-CF on the 10M-event shop at 1,035 MiB. The driver's memory is the real bound.
               .config("spark.driver.maxResultSize", "0"))
    if local:
        builder = builder.config("spark.driver.host", "127.0.0.1").config("spark.driver.bindAddress", "127.0.0.1")
    for key, value in (conf or {}).items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    return spark
