"""Pooled PostgreSQL connections that the server dropped (a restart, an outage, an idle
timeout) are replaced on next use: the engine's next query succeeds instead of failing."""

from __future__ import annotations

import psycopg
import pytest
from sqlalchemy import text

from seqrec.config import Workspace
from seqrec.testing import PG_URL

pytestmark = pytest.mark.integration


def test_queries_after_the_server_drops_pooled_connections_reconnect(
    pg_events_ws: Workspace,
) -> None:
    engine = pg_events_ws.engine
    pids = set()
    conns = [engine.connect() for _ in range(3)]  # three pooled connections
    for c in conns:
        pids.add(c.execute(text("SELECT pg_backend_pid()")).scalar_one())
    for c in conns:
        c.close()  # back to the pool, still open on the server
    with psycopg.connect(PG_URL.replace("+psycopg", ""), autocommit=True) as admin:
        for pid in pids:  # what a server restart does to them
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
    for _ in range(3):  # every pooled connection is dead: each use must reconnect
        with engine.connect() as c:
            assert c.execute(text("SELECT count(*) FROM events")).scalar_one() == 0
            assert c.execute(text("SELECT pg_backend_pid()")).scalar_one() not in pids
