"""Bugs surface as bugs: a TypeError from our own code is logged with its traceback, counted
and answered 500 with an error id; a real outage (a refused connection) still falls back."""

from __future__ import annotations

import asyncio
import json
import logging
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from seqrec.errors import SeqrecError, StoreUnavailable
from seqrec.recommend import Metrics, Recommender, StoreHealth


class CountingMetrics(Metrics):
    def __init__(self) -> None:
        self.internal: list[str] = []
        self.store_errors = 0

    def internal_error(self, where: str) -> None:
        self.internal.append(where)

    def store_error(self) -> None:
        self.store_errors += 1


class RaisingReader:
    def __init__(self, exc: BaseException):
        self.exc = exc

    def read(self, user_ids: list[str]) -> dict[str, list[Any]]:
        raise self.exc


def _recommender(reader: RaisingReader, metrics: CountingMetrics) -> Any:
    """The lookup half of a Recommender over ``reader`` (its store health included)."""
    rec = SimpleNamespace(reader=reader, metrics=metrics, lookup_s=0.0)
    rec.health = StoreHealth(30.0, metrics)
    rec.lookup = lambda ids: Recommender.lookup(rec, ids)  # type: ignore[arg-type]
    return rec


def test_a_type_error_in_the_reader_surfaces_logged_and_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    metrics = CountingMetrics()
    rec = _recommender(RaisingReader(TypeError("bad row shape")), metrics)
    with caplog.at_level(logging.ERROR, "seqrec.serve"), pytest.raises(TypeError, match="bad row"):
        Recommender.features(rec, ["u1"])  # type: ignore[arg-type]
    assert metrics.internal == ["online_lookup"]
    assert rec.health.up and metrics.store_errors == 0  # not disguised as an outage
    assert any(r.exc_info and r.exc_info[0] is TypeError for r in caplog.records)


def test_a_refused_connection_is_still_an_outage_and_falls_back() -> None:
    metrics = CountingMetrics()
    rec = _recommender(RaisingReader(ConnectionRefusedError(111, "refused")), metrics)
    with pytest.raises(StoreUnavailable, match="ConnectionRefusedError"):
        Recommender.lookup(rec, ["u1"])  # type: ignore[arg-type]
    assert Recommender.features(rec, ["u1"]) is None  # type: ignore[arg-type]  # fallback
    assert metrics.internal == [] and metrics.store_errors == 1 and not rec.health.up


class BrokenService:
    def __init__(self) -> None:
        self.metrics = CountingMetrics()

    async def answer_recommend(self, req: Any) -> tuple[bytes, str]:
        raise KeyError("user_seq")


def _fast_answer(service: BrokenService, body: bytes) -> tuple[int, dict[str, Any]]:
    from seqrec.serving.fastpath import FAST_ROUTES, _fast

    sent: list[dict[str, Any]] = []

    async def send(msg: dict[str, Any]) -> None:
        sent.append(msg)

    asyncio.run(_fast(service, FAST_ROUTES["/recommend"], body, send))  # type: ignore[arg-type]
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    data = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return status, json.loads(data)


def test_a_bug_behind_an_endpoint_is_a_500_with_an_error_id_found_in_the_log(
    caplog: pytest.LogCaptureFixture,
) -> None:
    service = BrokenService()
    with caplog.at_level(logging.ERROR, "seqrec.serve"):
        status, body = _fast_answer(service, b'{"user_id": "u1", "k": 3}')
    assert status == 500
    found = re.fullmatch(
        r"internal error ([0-9a-f]{12}): KeyError; see the server log.*", body["error"]
    )
    assert found, body
    logged = [r for r in caplog.records if found.group(1) in r.getMessage()]
    assert logged and logged[0].exc_info and logged[0].exc_info[0] is KeyError
    assert service.metrics.internal == ["request"]


def test_a_user_mistake_is_still_a_400_not_counted_as_a_bug() -> None:
    service = BrokenService()
    status, body = _fast_answer(service, b'{"user_id": 5, "k": "many"}')
    assert status == 400 and "validation error" in body["error"]
    assert service.metrics.internal == []


def test_the_prometheus_counter_counts_internal_errors_by_place() -> None:
    from prometheus_client import REGISTRY

    from seqrec.serving.metrics import PrometheusMetrics

    metrics = PrometheusMetrics()
    metrics.internal_error("online_lookup")

    def value(where: str) -> float | None:
        return REGISTRY.get_sample_value("seqrec_internal_errors_total", {"where": where})

    assert value("online_lookup") == 1.0 and value("request") == 0.0


def test_an_unapplied_workspace_is_a_seqrec_error_but_a_registry_bug_surfaces(
    tmp_path: Path,
) -> None:
    from seqrec.features.repo import get_store, require_applied
    from seqrec.testing import make_workspace

    ws = make_workspace(tmp_path / "ws")
    with pytest.raises(SeqrecError, match="not registered"):
        require_applied(get_store(ws))

    class BuggyStore:
        def get_feature_view(self, name: str) -> Any:
            raise AttributeError("'NoneType' object has no attribute 'spec'")

    with pytest.raises(AttributeError, match="spec"):
        require_applied(BuggyStore())  # type: ignore[arg-type]
