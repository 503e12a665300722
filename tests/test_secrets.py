"""Passwords come from the environment at run time and never land at rest: not in
feature_store.yaml, the Bento, the run history, command output or error messages."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import MetaData, select

from seqrec.bento import bundled_config
from seqrec.config import Workspace
from seqrec.features.repo import (
    PG_PASSWORD_ENV,
    PG_PASSWORD_QUOTED_ENV,
    REDIS_PASSWORD_ENV,
    get_store,
    render_feature_store_yaml,
    secret_env,
)
from seqrec.redact import redact_text, redact_url
from seqrec.testing import (
    PG_URL,
    RedisServer,
    drop_pg_redis_workspace,
    make_pg_redis_workspace,
    make_workspace,
    require_services,
    unique_name,
)

SENTINEL = "snt1nelQ7vX93kd"
REPO = Path(__file__).resolve().parent.parent


def _pg_url(password: str, port: int = 5432) -> str:
    return f"postgresql+psycopg://postgres:{password}@127.0.0.1:{port}/test"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:pw@h:6379/0", "redis://:***@h:6379/0"),
        ("rediss://user:p/w@h/1", "rediss://user:***@h/1"),
        ("postgresql+psycopg://u:s%40t@h:5432/db?x=1", "postgresql+psycopg://u:***@h:5432/db?x=1"),
        ("postgresql://u@h/db", "postgresql://u@h/db"),
        (
            "postgresql://h/db?password=pw&sslmode=require",
            "postgresql://h/db?password=***&sslmode=require",
        ),
    ],
)
def test_redact_url_masks_only_the_password(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_redact_text_masks_urls_keywords_and_named_secrets() -> None:
    text = "cannot reach redis://:pw1@h:1/0 (host=h password=pw2 port=5) token tok3"
    out = redact_text(text, ("tok3",))
    assert not any(s in out for s in ("pw1", "pw2", "tok3"))
    assert "redis://:***@h:1/0" in out


def _pg_redis_ws(root: Path, monkeypatch: pytest.MonkeyPatch, pg: str, redis: str) -> Workspace:
    monkeypatch.delenv("SEQREC_EVENTS_URL", raising=False)
    monkeypatch.setenv("SEQREC_PG_URL", pg)
    monkeypatch.setenv("SEQREC_REDIS_URL", redis)
    return make_workspace(root, "", "postgres-redis")


def test_feature_store_yaml_references_passwords_by_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pg_password, redis_password = "p@ss/word", "r3dis-pw"
    ws = _pg_redis_ws(
        tmp_path / "w", monkeypatch, _pg_url("p%40ss%2Fword"), f"redis://:{redis_password}@h:7/2"
    )
    yaml = render_feature_store_yaml(ws)
    assert "p@ss" not in yaml and "p%40ss" not in yaml and redis_password not in yaml
    assert f"password: ${{{PG_PASSWORD_ENV}}}" in yaml
    assert f"postgres:${{{PG_PASSWORD_QUOTED_ENV}}}@127.0.0.1:5432/test" in yaml
    assert f"h:7,db=2,password=${{{REDIS_PASSWORD_ENV}}}" in yaml
    assert secret_env(ws) == {
        PG_PASSWORD_ENV: pg_password,
        PG_PASSWORD_QUOTED_ENV: "p%40ss%2Fword",
        REDIS_PASSWORD_ENV: redis_password,
    }


def test_feature_store_yaml_without_passwords_has_no_references(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ws = _pg_redis_ws(tmp_path / "w", monkeypatch, _pg_url("").replace(":@", "@"), "redis://h/0")
    yaml = render_feature_store_yaml(ws)
    assert "${" not in yaml
    assert secret_env(ws) == {}


def test_feast_expands_the_references_to_the_runtime_passwords(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ws = _pg_redis_ws(tmp_path / "w", monkeypatch, _pg_url("a%24b"), "redis://:xyz@h:7/0")
    for name in (PG_PASSWORD_ENV, PG_PASSWORD_QUOTED_ENV, REDIS_PASSWORD_ENV):
        monkeypatch.delenv(name, raising=False)  # get_store sets them; undone after the test
    store = get_store(ws)
    assert store.config.offline_store.password == "a$b"
    assert "password=xyz" in store.config.online_store.connection_string
    assert ":a%24b@" in store.config.registry.path
    assert "a%24b" not in (ws.feature_repo / "feature_store.yaml").read_text()


def test_bundled_config_leaves_passwords_out(tmp_path: Path) -> None:
    ws = make_workspace(
        tmp_path / "w",
        f'[events]\nurl = "{_pg_url(SENTINEL)}"\n[features]\n'
        f'redis_url = "redis://:{SENTINEL}@h:6379/0"\n',
        "postgres-redis",
    )
    text = bundled_config(ws, "gpt2:abc")
    assert SENTINEL not in text
    assert 'url = "postgresql+psycopg://postgres@127.0.0.1:5432/test"' in text
    assert 'redis_url = "redis://h:6379/0"' in text


# -- the sentinel: a whole pipeline with passwords, then grep everything it left ---------------


@pytest.fixture
def redis_with_password() -> Iterator[RedisServer]:
    with RedisServer(password=SENTINEL) as server:
        yield server


def _seqrec(ws: Workspace, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(Path(sys.executable).parent / "seqrec"), *args, "-p", str(ws.root)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )


def _files_holding(root: Path, secret: bytes) -> list[str]:
    return [
        str(p)
        for p in root.rglob("*")
        if p.is_file() and not p.is_symlink() and secret in p.read_bytes()
    ]


def _rows_holding(ws: Workspace, secret: str) -> list[str]:
    """Every table of the workspace's schema (run history, Feast registry, features)."""
    meta = MetaData(schema=ws.config.events.pg_schema)
    meta.reflect(ws.engine)
    hits = []
    with ws.engine.connect() as conn:
        for table in meta.sorted_tables:
            for row in conn.execute(select(table)):
                if secret.encode() in repr(tuple(row)).encode():
                    hits.append(f"{table.name}: {row}")
    return hits


@pytest.mark.slow
@pytest.mark.integration
def test_no_password_at_rest_in_output_or_errors(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    redis_with_password: RedisServer,
) -> None:
    require_services()
    assert SENTINEL not in PG_URL
    pg_url = _pg_url(SENTINEL)  # trust auth: PostgreSQL ignores it, the URL still carries it
    monkeypatch.delenv("SEQREC_EVENTS_URL", raising=False)
    monkeypatch.setenv("SEQREC_PG_URL", pg_url)
    monkeypatch.setenv("SEQREC_REDIS_URL", redis_with_password.url)
    ws = make_pg_redis_workspace(tmp_path / "ws", unique_name("sec", request))
    bentoml_home = ws.model_store  # where `seqrec build` puts the Bento
    monkeypatch.setenv("BENTOML_HOME", str(bentoml_home))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    outputs: list[str] = []
    try:
        for args in (
            ("events", "synth", "--users", "30", "--items", "15"),
            ("features", "apply"),
            ("features", "build"),
            ("train", "--model", "popularity"),
            ("features", "materialize"),
            ("features", "status"),
            ("build", "--model", "popularity", "--json"),
        ):
            proc = _seqrec(ws, env, *args)
            outputs += [proc.stdout, proc.stderr]
            assert proc.returncode == 0, (args, redact_text(proc.stderr, (SENTINEL,)))
        bento = Path(json.loads(proc.stdout)["path"])
        assert bento.is_dir()

        # wrong ports: the errors (and status's report of an unreachable store) show the URLs
        # with their passwords masked
        bad_pg = {**env, "SEQREC_PG_URL": _pg_url(SENTINEL, port=1)}
        bad_redis = {
            **env,
            "SEQREC_REDIS_URL": redis_with_password.url.replace(str(redis_with_password.port), "1"),
        }
        for bad_env, args in ((bad_pg, ("events", "stats")), (bad_redis, ("features", "status"))):
            proc = _seqrec(ws, bad_env, *args)
            outputs += [proc.stdout, proc.stderr]
            shown = proc.stdout + proc.stderr
            assert ":***@127.0.0.1:1/" in shown, (args, redact_text(shown, (SENTINEL,)))
            assert "Traceback" not in shown, args

        leaks = [i for i, text in enumerate(outputs) if SENTINEL in text]
        assert leaks == [], [redact_text(outputs[i], (SENTINEL,))[-500:] for i in leaks]
        assert _files_holding(ws.root, SENTINEL.encode()) == []
        assert _files_holding(bento, SENTINEL.encode()) == []
        if bentoml_home.is_dir():
            assert _files_holding(bentoml_home, SENTINEL.encode()) == []
        assert _rows_holding(ws, SENTINEL) == []
        assert "${SEQREC_PG_PASSWORD}" in (ws.feature_repo / "feature_store.yaml").read_text()
    finally:
        drop_pg_redis_workspace(ws)
