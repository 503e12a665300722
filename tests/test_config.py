"""seqrec.toml: defaults, validation errors that name file, line and key; init and config CLI."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from seqrec.cli import build_cli
from seqrec.config import (
    CONFIG_NAME,
    PROFILES,
    Config,
    ServeConfig,
    load_workspace,
    parse_config,
    render_default_config,
)
from seqrec.errors import SeqrecError


@pytest.fixture(autouse=True)
def _restore_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The CLI writes SEQREC_PROJECT and BENTOML_HOME into os.environ: undo that afterwards."""
    for name in ("SEQREC_PROJECT", "BENTOML_HOME", "SEQREC_EVENTS_URL"):
        had = name in os.environ
        monkeypatch.setenv(name, os.environ.get(name, ""))
        if not had:
            monkeypatch.delenv(name)
    monkeypatch.delenv("SEQREC_PROJECT", raising=False)
    yield


def invoke(*args: str) -> Result:
    return CliRunner().invoke(build_cli(), [str(a) for a in args])


def write_config(root: Path, text: str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    path = root / CONFIG_NAME
    path.write_text(text)
    return path


def line_of(text: str, needle: str) -> int:
    """1-based number of the (unique) line that starts with ``needle``."""
    hits = [i for i, line in enumerate(text.splitlines(), 1) if line.startswith(needle)]
    assert len(hits) == 1, hits
    return hits[0]


def replace_line(text: str, old: str, new: str, section: str | None = None) -> str:
    """Replace the one line ``old`` (within ``[section]`` when given: keys repeat across
    sections, e.g. train.device and serve.device)."""
    start = text.index(f"[{section}]") if section else 0
    head, tail = text[:start], text[start:]
    if section:
        end = tail.find("\n[", 1)
        tail, rest = (tail, "") if end < 0 else (tail[:end], tail[end:])
    else:
        rest = ""
    assert tail.count(old) == 1, old
    return head + tail.replace(old, new) + rest


# -- defaults -------------------------------------------------------------------------------------


@pytest.mark.parametrize("profile", PROFILES)
def test_default_config_round_trips(profile: str) -> None:
    text = render_default_config(profile)
    cfg = parse_config(text)
    assert cfg == Config(profile=profile)  # type: ignore[arg-type]
    assert cfg.features.max_len == 50
    assert cfg.models.default == "gpt2"


def test_default_config_lists_every_key() -> None:
    text = render_default_config()
    for section, model in Config.model_fields.items():
        ann = model.annotation
        if not (isinstance(ann, type) and hasattr(ann, "model_fields")):
            continue
        assert f"[{section}]" in text
        for key in ann.model_fields:
            # keys whose default is the model's preset are listed commented out
            assert f"\n{key} = " in text or f"\n# {key} = ..." in text, f"{section}.{key} missing"


def test_empty_config_is_all_defaults() -> None:
    assert parse_config("") == Config()


def test_unknown_profile_for_render() -> None:
    with pytest.raises(SeqrecError, match="unknown profile 'nope'"):
        render_default_config("nope")


# -- errors name file, line and key ---------------------------------------------------------------


def test_unknown_key_names_file_line_key_and_suggests(tmp_path: Path) -> None:
    text = replace_line(render_default_config(), "max_len = 50", "maxlen = 50")
    path = write_config(tmp_path / "w", text)
    with pytest.raises(SeqrecError) as exc:
        load_workspace(tmp_path / "w")
    err = exc.value
    assert err.where == f"{path}:{line_of(text, 'maxlen = ')}"
    assert "unknown key 'features.maxlen'" in err.message
    assert err.hint == "did you mean 'max_len'?"
    msg = str(err)
    assert str(path) in msg and "features.maxlen" in msg and "did you mean 'max_len'" in msg


def test_unknown_section_suggests(tmp_path: Path) -> None:
    text = "[feature]\nmax_len = 10\n"
    with pytest.raises(SeqrecError) as exc:
        parse_config(text, source="x.toml")
    assert exc.value.where == "x.toml:1"
    assert "unknown key 'feature'" in exc.value.message
    assert "did you mean 'features'" in str(exc.value)


def test_unknown_key_without_close_match_lists_known(tmp_path: Path) -> None:
    with pytest.raises(SeqrecError) as exc:
        parse_config("[serve]\nhost = 'a'\nzzzzzz = 1\n", source="x.toml")
    assert exc.value.where == "x.toml:3"
    assert "known keys: " + ", ".join(sorted(ServeConfig.model_fields)) in str(exc.value)


@pytest.mark.parametrize(
    ("old", "new", "key"),
    [
        ("max_len = 50", "max_len = -1", "features.max_len"),
        ('profile = "embedded"', 'profile = "nope"', "profile"),
        ("# epochs = ...", 'epochs = "ten"', "train.epochs"),
        ("port = 3000", "port = 70000", "serve.port"),
        ('device = "auto"', 'device = "gpu"', "train.device"),
        ("# lr = ...", "lr = 0", "train.lr"),
    ],
)
def test_bad_value_names_file_line_and_key(tmp_path: Path, old: str, new: str, key: str) -> None:
    text = replace_line(render_default_config(), old, new, key.rpartition(".")[0] or None)
    path = write_config(tmp_path / "w", text)
    with pytest.raises(SeqrecError) as exc:
        load_workspace(tmp_path / "w")
    err = exc.value
    assert err.where == f"{path}:{line_of(text, new)}"
    assert f"bad value for '{key}'" in err.message
    assert new.split(" = ")[1].strip('"') in err.message  # shows what it got


def test_wrong_section_type(tmp_path: Path) -> None:
    with pytest.raises(SeqrecError) as exc:
        parse_config('profile = "embedded"\nfeatures = 3\n', source="x.toml")
    assert exc.value.where == "x.toml:2"
    assert "'features'" in exc.value.message


def test_invalid_toml_names_the_file_and_line(tmp_path: Path) -> None:
    path = write_config(tmp_path / "w", "[features]\nmax_len = = 3\n")
    with pytest.raises(SeqrecError, match="not valid TOML") as exc:
        load_workspace(tmp_path / "w")
    assert exc.value.where == f"{path}:2"
    assert str(path) in str(exc.value)


def test_missing_workspace_suggests_init(tmp_path: Path) -> None:
    with pytest.raises(SeqrecError, match=f"no {CONFIG_NAME} in") as exc:
        load_workspace(tmp_path / "nowhere")
    assert "seqrec init" in str(exc.value)


def test_relative_paths_resolve_against_the_workspace(tmp_path: Path) -> None:
    write_config(tmp_path / "w", render_default_config())
    ws = load_workspace(tmp_path / "w")
    root = (tmp_path / "w").resolve()
    assert ws.root == root
    assert ws.model_store == root / "models"
    assert ws.feature_repo == root / "feature_repo"
    assert ws.events_url == f"sqlite:///{root}/data/events.db"


def test_events_url_env_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_config(tmp_path / "w", "")
    monkeypatch.setenv("SEQREC_EVENTS_URL", "sqlite:////abs/e.db")
    assert load_workspace(tmp_path / "w").events_url == "sqlite:////abs/e.db"


# -- CLI ------------------------------------------------------------------------------------------


def test_cli_config_reports_broken_config_without_traceback(tmp_path: Path) -> None:
    text = replace_line(render_default_config(), "max_len = 50", "maxlen = 50")
    path = write_config(tmp_path / "w", text)
    result = invoke("config", "--project", tmp_path / "w")
    assert result.exit_code == 1
    assert result.stderr.startswith("error: ")
    assert f"{path}:{line_of(text, 'maxlen')}" in result.stderr
    assert "did you mean 'max_len'" in result.stderr
    assert "Traceback" not in result.output
    assert result.stdout == ""


def test_cli_config_invalid_toml(tmp_path: Path) -> None:
    path = write_config(tmp_path / "w", "profile = \n")
    result = invoke("config", "--project", tmp_path / "w")
    assert result.exit_code == 1
    assert result.stderr.startswith("error: ")
    assert str(path) in result.stderr and "not valid TOML" in result.stderr
    assert "Traceback" not in result.output


def test_cli_config_missing_workspace(tmp_path: Path) -> None:
    result = invoke("config", "--project", tmp_path / "nowhere")
    assert result.exit_code == 1
    assert result.stderr.startswith("error: no seqrec.toml in")
    assert "seqrec init" in result.stderr
    assert "Traceback" not in result.output


def test_cli_config_json_uses_env_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_config(tmp_path / "w", "[features]\nmax_len = 7\n")
    monkeypatch.setenv("SEQREC_PROJECT", str(tmp_path / "w"))
    result = invoke("config", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["features"]["max_len"] == 7
    assert data == json.loads(json.dumps(Config(features={"max_len": 7}).model_dump()))  # type: ignore[arg-type]


def test_cli_config_valid_text(tmp_path: Path) -> None:
    write_config(tmp_path / "w", "")
    result = invoke("config", "-p", tmp_path / "w")
    assert result.exit_code == 0, result.output
    assert ": valid" in result.stdout


def test_cli_init_writes_workspace_and_refuses_overwrite(tmp_path: Path) -> None:
    target = tmp_path / "new"
    result = invoke("init", target)
    assert result.exit_code == 0, result.output
    toml = target / CONFIG_NAME
    assert toml.is_file()
    assert parse_config(toml.read_text()) == Config()
    fs_yaml = target / "feature_repo" / "feature_store.yaml"
    assert fs_yaml.is_file()
    assert str((target / "data" / "online.db").resolve()) in fs_yaml.read_text()

    # a valid workspace now
    assert invoke("config", "-p", target).exit_code == 0

    toml.write_text("[features]\nmax_len = 9\n")
    again = invoke("init", target)
    assert again.exit_code == 1
    assert "already exists" in again.stderr and "--force" in again.stderr
    assert "Traceback" not in again.output
    assert toml.read_text() == "[features]\nmax_len = 9\n"  # untouched

    forced = invoke("init", target, "--force")
    assert forced.exit_code == 0, forced.output
    assert parse_config(toml.read_text()) == Config()


def test_cli_init_profile(tmp_path: Path) -> None:
    result = invoke("init", tmp_path / "pg", "--profile", "postgres-redis")
    assert result.exit_code == 0, result.output
    cfg = load_workspace(tmp_path / "pg").config
    assert cfg.profile == "postgres-redis"


def test_cli_init_bad_profile(tmp_path: Path) -> None:
    result = invoke("init", tmp_path / "x", "--profile", "nope")
    assert result.exit_code == 2  # click usage error
    assert not (tmp_path / "x" / CONFIG_NAME).exists()


def test_make_workspace_writes_boolean_and_string_overrides_as_valid_toml(tmp_path: Path) -> None:
    from seqrec.testing import make_workspace

    ws = make_workspace(tmp_path / "ws", '[train]\nstream = true\n[serve]\nhost = "0.0.0.0"')
    assert ws.config.train.stream is True
    assert ws.config.serve.host == "0.0.0.0"
