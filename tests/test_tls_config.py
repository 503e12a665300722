"""TLS settings: [events] pg_sslmode / pg_sslrootcert reach seqrec's engine and Feast's
postgres offline store and SQL registry; a rediss:// URL means TLS for Feast's Redis online
store and seqrec's own Redis clients."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis
from click.testing import CliRunner
from sqlalchemy.engine import make_url

from seqrec.cli import build_cli
from seqrec.config import load_workspace
from seqrec.errors import SeqrecError
from seqrec.features.redis_online import _client
from seqrec.features.repo import get_store, render_feature_store_yaml
from seqrec.testing import make_workspace, require_services

MODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")


@pytest.fixture(autouse=True)
def _urls_from_config(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("SEQREC_EVENTS_URL", "SEQREC_PG_URL", "SEQREC_REDIS_URL"):
        monkeypatch.delenv(name, raising=False)


def _yaml(text: str) -> dict:
    import yaml

    loaded: dict = yaml.safe_load(text)
    return loaded


@pytest.mark.parametrize("mode", MODES)
def test_each_sslmode_reaches_feast_and_the_engine(tmp_path: Path, mode: str) -> None:
    ws = make_workspace(tmp_path / "w", f'[events]\npg_sslmode = "{mode}"\n', "postgres-redis")
    config = _yaml(render_feature_store_yaml(ws))
    assert config["offline_store"]["sslmode"] == mode
    assert "sslrootcert_path" not in config["offline_store"]
    assert make_url(config["registry"]["path"]).query["sslmode"] == mode
    assert make_url(ws.events_url).query["sslmode"] == mode


def test_default_sslmode_is_prefer(tmp_path: Path) -> None:
    ws = make_workspace(tmp_path / "w", "", "postgres-redis")
    assert _yaml(render_feature_store_yaml(ws))["offline_store"]["sslmode"] == "prefer"


def test_sslrootcert_is_resolved_and_passed_to_feast(tmp_path: Path) -> None:
    ws = make_workspace(
        tmp_path / "w",
        '[events]\npg_sslmode = "verify-full"\npg_sslrootcert = "certs/ca.pem"\n',
        "postgres-redis",
    )
    cert = str(ws.root / "certs" / "ca.pem")
    config = _yaml(render_feature_store_yaml(ws))
    assert config["offline_store"]["sslrootcert_path"] == cert
    assert make_url(config["registry"]["path"]).query["sslrootcert"] == cert
    assert make_url(ws.events_url).query["sslrootcert"] == cert


def test_sslmode_in_the_url_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEQREC_PG_URL", "postgresql+psycopg://u@db:5432/x?sslmode=verify-ca")
    ws = make_workspace(tmp_path / "w", '[events]\npg_sslmode = "disable"\n', "postgres-redis")
    assert make_url(ws.events_url).query["sslmode"] == "verify-ca"
    assert _yaml(render_feature_store_yaml(ws))["offline_store"]["sslmode"] == "verify-ca"


def test_invalid_sslmode_is_a_config_error_naming_the_key(tmp_path: Path) -> None:
    ws = make_workspace(tmp_path / "w", "", "postgres-redis")
    path = ws.root / "seqrec.toml"
    text = path.read_text()
    assert 'pg_sslmode = "prefer"' in text  # seqrec init writes every key
    path.write_text(text.replace('pg_sslmode = "prefer"', 'pg_sslmode = "on"'))
    with pytest.raises(SeqrecError) as info:
        load_workspace(ws.root)
    message = str(info.value)
    assert "pg_sslmode" in message and "'on'" in message
    assert "seqrec.toml:" in message and "verify-full" in message


def test_rediss_url_means_tls_for_feast_and_seqrec(tmp_path: Path) -> None:
    url = "rediss://:pw@cache.example:6380/1?ssl_ca_certs=/etc/ca.pem"
    ws = make_workspace(tmp_path / "w", f'[features]\nredis_url = "{url}"\n', "postgres-redis")
    online = _yaml(render_feature_store_yaml(ws))["online_store"]
    assert online["connection_string"].endswith(",ssl=true")
    assert online["connection_string"].startswith("cache.example:6380,db=1,")
    store = get_store(ws)  # Feast parses it
    assert "ssl=true" in store.config.online_store.connection_string
    client = _client(ws.redis_url)
    assert client.connection_pool.connection_class is redis.SSLConnection
    assert client.connection_pool.connection_kwargs["ssl_ca_certs"] == "/etc/ca.pem"
    plain = make_workspace(tmp_path / "p", "", "postgres-redis")
    assert "ssl" not in _yaml(render_feature_store_yaml(plain))["online_store"]["connection_string"]
    assert _client(plain.redis_url).connection_pool.connection_class is redis.Connection


@pytest.mark.integration
def test_sslmode_require_against_a_server_without_tls_is_a_clear_error(tmp_path: Path) -> None:
    require_services()  # the machine's PostgreSQL has no TLS
    ws = make_workspace(tmp_path / "w", '[events]\npg_sslmode = "require"\n', "postgres-redis")
    result = CliRunner().invoke(build_cli(), ["events", "stats", "-p", str(ws.root)])
    assert result.exit_code != 0
    assert "Traceback" not in result.output + result.stderr
    assert "sslmode=require" in result.stderr
    assert "SSL" in result.stderr
