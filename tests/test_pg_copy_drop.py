"""A bulk load whose PostgreSQL connection dies mid-COPY: the load's own error reaches the
caller alone (psycopg's "error ignored terminating Copy" warning is not printed below it) and
nothing of the load is kept."""

from __future__ import annotations

import pandas as pd
import psycopg
import pytest
import sqlalchemy.exc
from sqlalchemy import func, select, text

from seqrec.config import Workspace
from seqrec.data.bulk import PgBulkLoad
from seqrec.data.schema import events

pytestmark = pytest.mark.integration


def _frame(n: int) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "user_id": [f"u{i % 7}" for i in range(n)],
            "item_id": [f"i{i % 11}" for i in range(n)],
            "event_type": ["view"] * n,
            "ts_ms": list(range(n)),
            "value": [None] * n,
        }
    )


def test_a_connection_killed_mid_copy_raises_once_quietly_and_keeps_nothing(
    pg_events_ws: Workspace, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("DEBUG")
    lost = (sqlalchemy.exc.OperationalError, psycopg.OperationalError)
    autocommit = pg_events_ws.engine.execution_options(isolation_level="AUTOCOMMIT")
    with (
        pytest.raises(lost),
        pg_events_ws.engine.connect() as conn,
        conn.begin(),
        PgBulkLoad(conn) as load,
    ):
        load.add_frame(_frame(100))
        with autocommit.connect() as other:
            other.execute(text(f"SELECT pg_terminate_backend({load.raw.info.backend_pid})"))
        for _ in range(20):  # the server is gone: a write or the COPY's end fails
            load.add_frame(_frame(100))
        load.finish()
    assert [r.getMessage() for r in caplog.records if r.name.startswith("psycopg")] == []
    with pg_events_ws.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(events)).scalar_one() == 0
