"""The one local SparkSession of a test process (``training.spark_als`` keeps
it): two cores, quiet, on 127.0.0.1. Skips where pyspark or Java is missing
(``make test`` installs the ``spark`` extra, so CI runs the Spark tests)."""

from __future__ import annotations

import os
import shutil
from typing import Any

import pytest


def local_spark() -> Any:
    pytest.importorskip("pyspark", reason="the spark extra: pip install 'sessionrec[spark]'")
    if shutil.which("java") is None and "JAVA_HOME" not in os.environ:
        pytest.skip("Spark needs Java 17 or later")
    from training import spark_als

    spark_als.configure("local[2]")
    return spark_als.spark_session()
