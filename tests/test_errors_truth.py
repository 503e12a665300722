"""Bugs surface as bugs: a TypeError from our own code is logged with its traceback, counted
and answered 500 with an error id; a real outage (a refused connection) still falls back.

Best-effort steps (label mirroring, report sections, drift, the extra-items refresh, hot
reload) go on after a failure, but log a bug as an error with its traceback (counted where
serving); narrowed catches (features status, the item text view, CORS, the schema check, the
run-history tables) let a bug through instead of reporting an outage or "not registered"."""

from __future__ import annotations

import asyncio
import json
import logging
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from seqrec.errors import SeqrecError, StoreUnavailable
from seqrec.hookspecs import hookimpl
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


# -- best-effort steps: an expected failure is one warning line, a bug an error with a traceback


def _bug_records(caplog: pytest.LogCaptureFixture, exc_type: type[BaseException]) -> list[Any]:
    return [
        r
        for r in caplog.records
        if r.levelno >= logging.ERROR and r.exc_info and r.exc_info[0] is exc_type
    ]


def test_log_caught_keeps_an_expected_failure_to_one_line_and_a_bug_to_a_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from seqrec.errors import log_caught

    log = logging.getLogger("seqrec.test")
    with caplog.at_level(logging.WARNING, "seqrec.test"):
        assert log_caught(log, OSError("disk full"), (OSError,), "step %s failed", "x") is True
        assert log_caught(log, TypeError("bad arg"), (OSError,), "step %s failed", "y") is False
    expected, bug = caplog.records
    assert expected.levelno == logging.WARNING and expected.exc_info is None
    assert expected.getMessage() == "step x failed: disk full"
    assert bug.levelno == logging.ERROR and bug.exc_info and bug.exc_info[0] is TypeError
    assert "step y failed: internal error" in bug.getMessage()


def test_a_bug_while_mirroring_labels_is_logged_with_its_traceback_not_as_a_label_problem(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from seqrec import labels
    from seqrec.promotion import mirror_labels
    from seqrec.testing import make_workspace

    ws = make_workspace(tmp_path / "ws")
    with caplog.at_level(logging.WARNING, "seqrec.promotion"):
        mirror_labels(ws, "stage=production", "seqrec-gone:1")  # no such model: expected
    (gone,) = caplog.records
    assert gone.levelno == logging.WARNING and gone.exc_info is None
    assert "no stored model" in gone.getMessage()

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise TypeError("set_labels() got an unexpected keyword argument")

    monkeypatch.setattr(labels, "set_labels", broken)
    caplog.clear()
    with caplog.at_level(logging.WARNING, "seqrec.promotion"):
        mirror_labels(ws, "stage=production", "seqrec-gone:1")  # best effort: not raised
    assert _bug_records(caplog, TypeError)


def test_a_bug_in_a_report_section_is_a_note_and_an_error_with_its_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from seqrec import runs
    from seqrec.monitoring import report
    from seqrec.testing import make_workspace

    ws = make_workspace(tmp_path / "ws")
    rid = runs.start_run(ws, "train")
    runs.finish_run(ws, rid, "succeeded")

    def broken(run: dict[str, Any], out: Path) -> str:
        raise TypeError("'NoneType' object is not subscriptable")

    monkeypatch.setattr(report, "drift_section", broken)
    with caplog.at_level(logging.WARNING, "seqrec.monitoring.report"):
        index = report.build_report(ws, rid, tmp_path / "rep")
    assert "not available: TypeError" in index.read_text()
    assert _bug_records(caplog, TypeError)


def test_a_bug_computing_drift_is_returned_as_its_error_and_logged_with_its_traceback(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from seqrec.monitoring import drift

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise TypeError("unsupported operand")

    monkeypatch.setattr(drift, "compute_drift", broken)
    with caplog.at_level(logging.WARNING, "seqrec.monitoring.drift"):
        result = drift.drift_for_model(None, None, None, 0.2)  # monitoring: never raises
    assert result.error == "TypeError: unsupported operand"
    assert _bug_records(caplog, TypeError)


def test_a_bug_in_a_retrain_drift_step_is_recorded_and_logged_with_its_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from seqrec import runs
    from seqrec.monitoring import drift
    from seqrec.retrain import _drift
    from seqrec.testing import make_workspace

    ws = make_workspace(tmp_path / "ws")
    rid = runs.start_run(ws, "retrain")

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise KeyError("valid")

    monkeypatch.setattr(drift, "drift_for_model", broken)
    with caplog.at_level(logging.WARNING, "seqrec.retrain"):
        out = _drift(ws, rid, None, "seqrec-x:1", None)
    assert out["error"] == "KeyError: 'valid'"
    assert runs.get_run(ws, rid)["drift"]["error"] == "KeyError: 'valid'"
    assert _bug_records(caplog, KeyError)

    def unrecordable(*args: Any, **kwargs: Any) -> None:
        raise AttributeError("'dict' object has no attribute 'to_json'")

    monkeypatch.setattr(runs, "update_run", unrecordable)
    caplog.clear()
    with caplog.at_level(logging.WARNING, "seqrec.retrain"):
        _drift(ws, rid, None, "seqrec-x:1", None)  # not raised: monitoring never fails a run
    assert _bug_records(caplog, AttributeError)


# -- `seqrec features status`: "not applied" and "unreachable" only when they are true


def test_features_status_says_not_applied_only_when_the_view_is_not_registered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from seqrec.data.schema import create_schema
    from seqrec.features import status as fstatus
    from seqrec.testing import make_workspace

    ws = make_workspace(tmp_path / "ws")
    create_schema(ws.engine)
    st = fstatus.status(ws)
    assert st["applied"] is False and st["events"] == 0

    (tmp_path / "ws" / "data").mkdir(exist_ok=True)
    registry = tmp_path / "ws" / "data" / "registry.db"
    registry.write_bytes(b"\x08\x96\x01not a registry\xff")
    assert fstatus.status(ws)["applied"].startswith(f"error: {registry}: the Feast registry is")

    def broken(ws: Any) -> Any:
        raise TypeError("get_store() missing 1 required positional argument")

    monkeypatch.setattr(fstatus, "get_store", broken)
    with pytest.raises(TypeError, match="get_store"):
        fstatus.status(ws)


def test_features_status_says_unreachable_only_for_a_database_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from seqrec.features import status as fstatus
    from seqrec.testing import free_port, make_workspace

    port = free_port()  # nothing listens there
    down = make_workspace(
        tmp_path / "down",
        f'[events]\nurl = "postgresql+psycopg://postgres@127.0.0.1:{port}/test"\n',
    )
    assert fstatus.status(down)["events"].startswith("unreachable:")

    ws = make_workspace(tmp_path / "ws")

    def broken(engine: Any) -> Any:
        raise TypeError("cannot unpack non-iterable NoneType object")

    monkeypatch.setattr(fstatus, "events_state", broken)
    with pytest.raises(TypeError, match="unpack"):
        fstatus.status(ws)


def test_a_damaged_registry_is_not_reported_as_a_missing_item_text_view(tmp_path: Path) -> None:
    from seqrec.data.schema import create_schema
    from seqrec.features.repo import apply
    from seqrec.testing import make_workspace
    from seqrec.text.features import ItemTextReader

    ws = make_workspace(tmp_path / "ws")
    create_schema(ws.engine)
    apply(ws)
    with pytest.raises(SeqrecError, match="no item text feature view"):
        ItemTextReader(ws)  # registered, but no item text view: the user's next step
    registry = next((tmp_path / "ws").rglob("registry.db"))
    registry.write_bytes(b"\x08\x96\x01not a registry\xff")
    with pytest.raises(SeqrecError, match="the Feast registry is unreadable") as err:
        ItemTextReader(ws)
    assert str(registry) in str(err.value) and "item text" not in str(err.value)


# -- serving: the items newer than the model, tracing, the warm-up check, hot reload


class BrokenExtraSource:
    """An extra-items source whose ``load`` raises ``exc`` (deliberately broken)."""

    def __init__(self, exc: BaseException):
        self.exc = exc

    def load(self) -> Any:
        raise self.exc


def _extra_refresher(exc: BaseException, metrics: CountingMetrics) -> Any:
    rec = SimpleNamespace(
        _extra_source=BrokenExtraSource(exc), metrics=metrics, extra=None, _extra_error=None
    )
    rec.refresh = lambda: Recommender.refresh_extra_items(rec)  # type: ignore[arg-type]
    return rec


def test_a_bug_refreshing_extra_items_is_counted_and_logged_with_its_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    metrics = CountingMetrics()
    rec = _extra_refresher(TypeError("'NoneType' object is not iterable"), metrics)
    with caplog.at_level(logging.WARNING, "seqrec.serve"):
        assert rec.refresh() is False and rec.refresh() is False  # the last block stays
    assert metrics.internal == ["extra_items", "extra_items"]
    assert rec._extra_error.startswith("internal error: TypeError: 'NoneType'")
    assert len(_bug_records(caplog, TypeError)) == 1  # logged once per distinct error


def test_a_database_outage_refreshing_extra_items_is_a_warning_not_a_bug(
    caplog: pytest.LogCaptureFixture,
) -> None:
    metrics = CountingMetrics()
    rec = _extra_refresher(ConnectionRefusedError(111, "Connection refused"), metrics)
    with caplog.at_level(logging.WARNING, "seqrec.serve"):
        assert rec.refresh() is False
    assert metrics.internal == [] and "Connection refused" in rec._extra_error
    (record,) = caplog.records
    assert record.levelno == logging.WARNING and record.exc_info is None


class BrokenScorer(torch.nn.Module):
    """A model whose ``score`` raises ``exc`` (deliberately broken)."""

    spec_name = "broken-scorer"

    def __init__(self, exc: BaseException):
        super().__init__()
        self.exc = exc

    def score(self, batch: Any) -> torch.Tensor:
        raise self.exc


def _scoring_recommender(exc: BaseException, metrics: CountingMetrics) -> Any:
    rec = SimpleNamespace(
        model=BrokenScorer(exc),
        metrics=metrics,
        tag="seqrec-broken:1",
        text_aware=False,
        max_len=4,
        n_items=5,
        n_types=2,
        device=torch.device("cpu"),
        _reads_now=False,
    )
    rec._example = lambda b, n, seed: Recommender._example(rec, b, n, seed)  # type: ignore[arg-type]
    rec._trace_inputs = lambda b, n, seed: Recommender._trace_inputs(rec, b, n, seed)  # type: ignore[arg-type]
    rec._scores = lambda items, types, times, now: rec.model.score(None)
    return rec


@pytest.mark.parametrize(
    ("exc", "traceback_logged"),
    [(RuntimeError("Tracer cannot infer type"), False), (TypeError("bad operand"), True)],
)
def test_a_score_that_cannot_be_traced_is_served_eagerly_and_a_bug_shows_its_traceback(
    exc: BaseException, traceback_logged: bool, caplog: pytest.LogCaptureFixture
) -> None:
    rec = _scoring_recommender(exc, CountingMetrics())
    with caplog.at_level(logging.WARNING, "seqrec.serve"):
        assert Recommender._trace(rec) is None  # type: ignore[arg-type]  # eager
    (record,) = [r for r in caplog.records if "serving seqrec-broken:1 eagerly" in r.getMessage()]
    assert bool(record.exc_info) is traceback_logged


def test_a_model_that_cannot_score_the_warm_up_batch_is_refused_counted_and_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    metrics = CountingMetrics()
    rec = _scoring_recommender(KeyError("item_seq"), metrics)
    with (
        caplog.at_level(logging.ERROR, "seqrec.serve"),
        pytest.raises(SeqrecError, match="warm-up batch: KeyError: 'item_seq'"),
    ):
        Recommender.check(rec)  # type: ignore[arg-type]
    assert metrics.internal == ["model_load"] and _bug_records(caplog, KeyError)


def _reloader(resolve: Any, load: Any, metrics: CountingMetrics) -> Any:
    import threading

    from seqrec.recommend import ModelReloader

    holder = SimpleNamespace(recommender=SimpleNamespace(tag="seqrec-m:1"))
    return ModelReloader(holder, threading.Lock(), load, resolve, "stage=production", 0.0, metrics)


def _resolve_raising(exc: BaseException) -> Any:
    def resolve(ref: str) -> str:
        raise exc

    return resolve


def test_a_bug_resolving_the_followed_label_is_counted_and_logged_with_its_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    metrics = CountingMetrics()
    reloader = _reloader(_resolve_raising(TypeError("unhashable type: 'list'")), None, metrics)
    with caplog.at_level(logging.WARNING, "seqrec.serve"):
        assert reloader.poll() is False  # the serving model stays
    assert metrics.internal == ["model_load"] and _bug_records(caplog, TypeError)
    assert "internal error: TypeError: unhashable" in reloader.status()["last_error"]
    with pytest.raises(SeqrecError, match="cannot reload stage=production: internal error"):
        reloader.reload()  # admin: still a refusal (422), now naming the bug
    assert metrics.internal == ["model_load", "model_load"]


def test_a_missing_model_behind_the_label_is_a_warning_not_a_bug(
    caplog: pytest.LogCaptureFixture,
) -> None:
    metrics = CountingMetrics()
    missing = SeqrecError("no model is stage=production: it was withdrawn")
    reloader = _reloader(_resolve_raising(missing), None, metrics)
    with caplog.at_level(logging.WARNING, "seqrec.serve"):
        assert reloader.poll() is False
    assert metrics.internal == []
    (record,) = caplog.records
    assert record.levelno == logging.WARNING and record.exc_info is None


def test_a_bug_loading_a_new_model_refuses_it_counted_and_logged_with_its_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def load(tag: str, old: Any) -> Any:
        raise AttributeError("'NoneType' object has no attribute 'ctx'")

    metrics = CountingMetrics()
    reloader = _reloader(lambda ref: "seqrec-m:2", load, metrics)
    with caplog.at_level(logging.ERROR, "seqrec.serve"):
        assert reloader.poll() is False  # refused: the old model keeps serving
    assert reloader.serving_tag == "seqrec-m:1" and reloader.status()["failures"] == 1
    assert metrics.internal == ["model_load"] and _bug_records(caplog, AttributeError)


def test_a_bug_in_the_reload_watcher_is_counted_and_the_watcher_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    metrics = CountingMetrics()
    reloader = _reloader(lambda ref: "seqrec-m:1", None, metrics)
    calls: list[int] = []

    def poll() -> bool:
        calls.append(1)
        if len(calls) == 2:
            reloader.stop()
        raise TypeError("poll() bug")

    reloader.poll = poll
    with caplog.at_level(logging.ERROR, "seqrec.serve"):
        reloader._watch()  # returns once stopped: the bug did not end it
    assert len(calls) == 2 and metrics.internal == ["model_load", "model_load"]
    assert len(_bug_records(caplog, TypeError)) == 2


# -- plugin boundaries keep the traceback; narrowed catches let a bug through


class RaisingModelsPlugin:
    """A plugin whose ``register_models`` has a bug (deliberately broken)."""

    @hookimpl
    def register_models(self, register: Any) -> None:
        raise TypeError("register() takes 1 positional argument but 2 were given")


def test_a_plugin_whose_hook_raises_is_reported_in_one_line_with_its_traceback_at_debug(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from seqrec.models import model_registry
    from seqrec.plugins import PluginWarning, new_plugin_manager

    pm = new_plugin_manager(load_entrypoints=False)
    pm.register(RaisingModelsPlugin(), name="raising")
    with (
        caplog.at_level(logging.DEBUG, "seqrec.plugins"),
        pytest.warns(PluginWarning, match="plugin 'raising' broke: register_models raised"),
    ):
        specs = model_registry(pm)
    assert "popularity" in specs and pm.failures["raising"].startswith("register_models raised")
    (record,) = [r for r in caplog.records if r.name == "seqrec.plugins"]
    assert record.levelno == logging.DEBUG and record.exc_info
    assert record.exc_info[0] is TypeError


def test_cors_setting_missing_is_off_but_a_bug_reading_it_surfaces(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from seqrec.compat import bentoml_private

    def missing(name: str) -> Any:
        raise SeqrecError(f"BentoML 0.0 has no {name}")

    monkeypatch.setattr(bentoml_private, "private", missing)
    assert bentoml_private.cors_enabled() is False

    def broken(name: str) -> Any:
        raise TypeError("private() got an unexpected keyword argument")

    monkeypatch.setattr(bentoml_private, "private", broken)
    with pytest.raises(TypeError, match="private"):
        bentoml_private.cors_enabled()


def test_an_unreachable_database_is_store_unavailable_but_a_wrong_engine_is_a_bug() -> None:
    from sqlalchemy.exc import NoInspectionAvailable

    from seqrec.data.schema import make_engine, require_schema
    from seqrec.testing import free_port

    down = make_engine(f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/test")
    with pytest.raises(StoreUnavailable, match="events database unreachable"):
        require_schema(down)
    with pytest.raises(NoInspectionAvailable):
        require_schema("sqlite://")  # type: ignore[arg-type]  # a URL where an engine belongs


def test_a_bug_creating_the_run_history_tables_is_not_a_database_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from seqrec import runs
    from seqrec.data import schema
    from seqrec.testing import make_workspace

    (tmp_path / "a-directory").mkdir()  # not a database file: SQLite cannot open it
    unusable = make_workspace(
        tmp_path / "unusable", f'[events]\nurl = "sqlite:///{tmp_path / "a-directory"}"\n'
    )
    with pytest.raises(SeqrecError, match="cannot create the run-history tables"):
        runs.tables(unusable)

    def broken(dbapi_conn: Any, record: Any) -> None:
        raise TypeError("_sqlite_pragmas() takes 2 positional arguments but 3 were given")

    monkeypatch.setattr(schema, "_sqlite_pragmas", broken)  # before the engine exists
    ws = make_workspace(tmp_path / "ws")
    with pytest.raises(TypeError, match="_sqlite_pragmas"):
        runs.tables(ws)
