"""The spark-redis profile: Spark SQL features and labels, Feast's spark offline store, Redis.

The end-to-end check builds the training sets of the synthetic log with all three profiles
and asserts they are the same rows, sequences and labels (about a minute on 2 shared cores, most
of it the JVM in local mode); it runs under `make test`, and `make test-spark` runs it alone and
records the result in bench/results/spark_redis.json. The bad-input tests need neither pyspark
nor Java.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from sqlalchemy import func, select

from seqrec.config import Workspace
from seqrec.data.importers import RawEvent
from seqrec.data.schema import event_types, events, items
from seqrec.errors import SeqrecError
from seqrec.features.definitions import FEATURES
from seqrec.features.materialize import materialize
from seqrec.features.readers import online_reader
from seqrec.features.repo import apply, render_feature_store_yaml
from seqrec.features.spark.lake import read_state
from seqrec.features.spark.session import INSTALL_HINT, java_problem, require_spark
from seqrec.testing import (
    drop_pg_redis_workspace,
    import_rows,
    load_synth,
    make_pg_redis_workspace,
    make_workspace,
    require_services,
    unique_name,
)
from seqrec.training.data import (
    ClassificationData,
    NextItemData,
    build_classification_data,
    build_next_item_data,
)

pytestmark = pytest.mark.integration

#: one core, a small JVM: the test shares the machine
LOCAL_SPARK = """
[spark]
master = "local[1]"
driver_memory = "1g"
shuffle_partitions = 2
"""
USERS, ITEMS = 40, 30
LABELS = ("purchase-within:7d", "churn:7d")
SET_FIELDS = ("user_ids", "items", "types", "times", "labels", "loss_from", "now")


def _server_ws(request: pytest.FixtureRequest, root: Path, profile: str) -> Iterator[Workspace]:
    require_services()
    name = unique_name(profile.split("-")[0][:2], request)  # "sp" / "po": a schema each
    w = make_pg_redis_workspace(root, name, LOCAL_SPARK, profile=profile)
    try:
        yield w
    finally:
        drop_pg_redis_workspace(w)


@pytest.fixture
def spark_ws(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Workspace]:
    yield from _server_ws(request, tmp_path / "spark", "spark-redis")


@pytest.fixture
def pg_ws(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Workspace]:
    yield from _server_ws(request, tmp_path / "pg", "postgres-redis")


@pytest.fixture
def spark_session_stopped() -> Iterator[None]:
    """Stop the test's Spark session (its JVM) whatever happens."""
    yield
    from seqrec.features.spark.session import stop_session

    stop_session()


# -- bad input: no pyspark, no Java (no JVM starts) ----------------------------------------------


def test_without_pyspark_the_error_says_to_install_the_spark_extra(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "pyspark", None)  # `import pyspark` raises ImportError
    with pytest.raises(SeqrecError) as err:
        require_spark()
    assert "needs pyspark" in str(err.value)
    assert INSTALL_HINT == "pip install 'seqrec[spark]'"
    assert INSTALL_HINT in str(err.value)


def test_without_java_the_problem_names_path_or_java_home(tmp_path: Path) -> None:
    assert java_problem({"PATH": str(tmp_path)}) == "no `java` on PATH and JAVA_HOME is unset"
    assert java_problem({"JAVA_HOME": str(tmp_path), "PATH": ""}) == (
        f"JAVA_HOME={tmp_path} has no bin/java"
    )
    java = tmp_path / "jdk" / "bin" / "java"
    java.parent.mkdir(parents=True)
    java.write_text("#!/bin/sh\n")
    java.chmod(0o755)
    assert java_problem({"JAVA_HOME": str(tmp_path / "jdk")}) is None


def test_training_data_on_spark_redis_without_pyspark_is_the_install_error(
    spark_ws: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    load_synth(spark_ws, users=10, items=10)
    monkeypatch.setitem(sys.modules, "pyspark", None)
    with pytest.raises(SeqrecError, match=r"pip install 'seqrec\[spark\]'"):
        build_next_item_data(spark_ws)


def test_feast_apply_on_spark_redis_without_pyspark_is_the_install_error(
    spark_ws: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "pyspark", None)
    with pytest.raises(SeqrecError, match=r"pip install 'seqrec\[spark\]'"):
        apply(spark_ws)


def test_spark_redis_feature_store_yaml_has_the_spark_offline_store_and_redis(
    spark_ws: Workspace,
) -> None:
    config = yaml.safe_load(render_feature_store_yaml(spark_ws))
    conf = config["offline_store"]["spark_conf"]
    assert config["offline_store"]["type"] == "spark"
    assert conf["spark.master"] == "local[1]"
    assert conf["spark.driver.memory"] == "1g"
    assert conf["spark.sql.session.timeZone"] == "UTC"
    assert conf["spark.sql.shuffle.partitions"] == "2"
    assert config["registry"]["registry_type"] == "sql"
    assert f"search_path%3D{spark_ws.config.events.pg_schema}" in config["registry"]["path"]
    assert config["online_store"]["type"] == "redis"


# -- the same training sets as the other profiles (real pyspark, local[1]) -----------------------


def _assert_same_sets(a: NextItemData | ClassificationData, b: Any, what: str) -> dict[str, int]:
    rows = {}
    for part in ("train", "valid", "test"):
        x, y = getattr(a, part), getattr(b, part)
        assert len(x) == len(y) > 0, f"{what} {part}"
        for field in SET_FIELDS:
            u, v = getattr(x, field), getattr(y, field)
            assert (u is None) == (v is None), f"{what} {part} {field}"
            if u is not None:
                np.testing.assert_array_equal(u, v, err_msg=f"{what} {part} {field}")
        rows[part] = len(x)
    return rows


def _late_events(ws: Workspace) -> list[RawEvent]:
    """Events imported after the first build: old timestamps (late arrivals), a tie on an
    existing event's millisecond, and a new user."""
    with ws.engine.connect() as conn:
        item_ids = list(conn.execute(select(items.c.item_id).order_by(items.c.item_idx)).scalars())
        names = list(conn.execute(select(event_types.c.name).order_by(event_types.c.type_idx)))
        firsts = conn.execute(
            select(events.c.user_id, func.min(events.c.ts_ms))
            .group_by(events.c.user_id)
            .order_by(events.c.user_id)
            .limit(3)
        ).all()
    kinds = [n[0] for n in names]
    out = [
        RawEvent(str(user), item_ids[k + 1], int(ts), kinds[-1], None)  # same ms as an event
        for k, (user, ts) in enumerate(firsts)
    ]
    out += [RawEvent(str(firsts[0][0]), item_ids[0], int(firsts[0][1]) - 3_600_000, kinds[0], None)]
    out += [RawEvent("late_user", item_ids[i], 1_000 * i, kinds[0], None) for i in range(1, 5)]
    return out


def _online(ws: Workspace, users: list[str]) -> dict[str, list[Any]]:
    return online_reader(ws).read(users)


def _java_version() -> str:
    out = subprocess.run(["java", "-version"], capture_output=True, text=True, check=False)
    return (out.stderr.splitlines() or ["unknown"])[0]


def test_spark_redis_training_sets_equal_embedded_and_postgres_redis(
    spark_ws: Workspace, pg_ws: Workspace, tmp_path: Path, spark_session_stopped: None
) -> None:
    pytest.importorskip("pyspark", reason="pyspark not installed: pip install 'seqrec[spark]'")
    emb = make_workspace(tmp_path / "emb", LOCAL_SPARK)
    profiles = {"embedded": emb, "postgres-redis": pg_ws, "spark-redis": spark_ws}
    for w in profiles.values():
        load_synth(w, users=USERS, items=ITEMS)
        apply(w)
    seconds: dict[str, float] = {}

    def timed(name: str, w: Workspace, fn: Any, *args: Any) -> Any:
        t0 = time.perf_counter()
        out = fn(w, *args)
        seconds[f"{name} {w.config.profile}"] = round(time.perf_counter() - t0, 2)
        return out

    sets = {p: timed("next-item", w, build_next_item_data) for p, w in profiles.items()}
    rows: dict[str, Any] = {}
    for other in ("embedded", "postgres-redis"):
        rows["next-item"] = _assert_same_sets(sets[other], sets["spark-redis"], other)
    for label in LABELS:
        cls = {p: timed(label, w, build_classification_data, label) for p, w in profiles.items()}
        for other in ("embedded", "postgres-redis"):
            rows[label] = _assert_same_sets(cls[other], cls["spark-redis"], f"{label} {other}")
        assert cls["spark-redis"].class_names == cls["embedded"].class_names

    # online: Redis rows written from the Spark features equal postgres-redis's
    for w in (pg_ws, spark_ws):
        timed("materialize", w, materialize)
    users = [*sorted(set(sets["spark-redis"].test.user_ids)), "nobody"]
    on_pg, on_spark = _online(pg_ws, users), _online(spark_ws, users)
    for name in FEATURES:
        assert on_spark[name] == on_pg[name], name
    assert on_spark["item_seq"][-1] is None

    # late and tied events: appended to the Parquet copy as a second part, same sets again
    late = {p: _late_events(w) for p, w in profiles.items()}
    assert late["spark-redis"] == late["embedded"] == late["postgres-redis"]
    for w in profiles.values():
        import_rows(w, late["embedded"], "late")
    again = {p: timed("next-item again", w, build_next_item_data) for p, w in profiles.items()}
    assert read_state(spark_ws.snapshot_dir) is not None
    assert read_state(spark_ws.snapshot_dir).parts == 2  # type: ignore[union-attr]
    for other in ("embedded", "postgres-redis"):
        rows["next-item after late events"] = _assert_same_sets(
            again[other], again["spark-redis"], f"late {other}"
        )
    report = materialize(spark_ws, incremental=True)
    assert report.users_written == 4  # the three users with new events and the new one
    on_late = _online(spark_ws, ["late_user"])
    assert on_late["n_events"] == [4]

    out = os.environ.get("SEQREC_SPARK_RESULT")
    if out:
        result = {
            "test": "tests/test_spark_redis.py::"
            "test_spark_redis_training_sets_equal_embedded_and_postgres_redis",
            "outcome": "passed",
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "checked": "spark-redis training sets (next-item leave-one-out; "
            f"{', '.join(LABELS)}) identical to embedded and postgres-redis: "
            + ", ".join(SET_FIELDS)
            + "; Redis rows equal postgres-redis's; late and tied events appended",
            "synthetic_log": {"users": USERS, "items": ITEMS, "seed": 3},
            "rows": rows,
            "seconds": seconds,
            "spark": {"master": "local[1]", "driver_memory": "1g"},
            "versions": {
                "pyspark": version("pyspark"),
                "feast": version("feast"),
                "java": _java_version(),
                "python": platform.python_version(),
            },
        }
        Path(out).write_text(json.dumps(result, indent=2) + "\n")
