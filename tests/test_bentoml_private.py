"""Every private BentoML API seqrec uses (:mod:`seqrec.compat.bentoml_private`) still exists in
the installed BentoML, and still does what seqrec relies on. A BentoML upgrade that moves one
fails here, naming the symbol and the BentoML version, instead of in a user's command."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

from seqrec.compat import bentoml_private as bp
from seqrec.errors import SeqrecError


def _moved(what: str, exc: BaseException) -> str:
    return f"BentoML {bp.bentoml_version()}: {what} moved or changed ({type(exc).__name__}: {exc})"


@pytest.mark.parametrize("name", sorted(bp.SYMBOLS))
def test_private_symbol_imports(name: str) -> None:
    """Fails with "BentoML <version> has no <module>.<name>" when a release moves it."""
    try:
        symbol = bp.private(name)
    except SeqrecError as exc:
        pytest.fail(str(exc), pytrace=False)
    assert symbol is not None


@pytest.mark.parametrize("function", ["get", "list", "create", "delete"])
def test_model_functions_take_the_private_store_keyword(function: str) -> None:
    import bentoml

    params = inspect.signature(getattr(bentoml.models, function)).parameters
    assert bp.STORE_KWARG in params, _moved(
        f"bentoml.models.{function}({bp.STORE_KWARG}=...)", KeyError(bp.STORE_KWARG)
    )


def test_container_settings_seqrec_reads() -> None:
    """The configured store directory and the CORS switch, read without the adapter's
    fallbacks (which would hide a move)."""
    container = bp.private("BentoMLContainer")
    try:
        models_dir = container.model_store_dir.get()
        cors = container.http.cors.enabled.get()
    except AttributeError as exc:
        pytest.fail(_moved("BentoMLContainer settings", exc), pytrace=False)
    assert Path(models_dir) == bp.default_models_dir()
    assert isinstance(cors, bool) and bp.cors_enabled() is cors


def test_bento_env_builds_an_environment_entry() -> None:
    env = bp.bento_env("SEQREC_MODEL", "seqrec-gpt2:abc")
    assert (env.name, env.value) == ("SEQREC_MODEL", "seqrec-gpt2:abc")


def test_separate_store_and_relabel_round_trip(tmp_path: Path) -> None:
    """A model saved into a store of its own is found there (and only there), and labels
    changed in place are what a fresh read of the store sees."""
    import bentoml

    store = bp.store_kwargs(tmp_path / "models")
    with bentoml.models.create("seqrec-compat-check", labels={"a": "1"}, **store) as bm:
        (Path(bm.path) / "weights.bin").write_bytes(b"x")
    tag = str(bm.tag)
    assert [str(m.tag) for m in bentoml.models.list(**store)] == [tag]

    now = bp.relabel(bentoml.models.get(tag, **store), {"stage": "production", "a": ""})
    assert now == {"stage": "production"}
    assert dict(bentoml.models.get(tag, **store).info.labels) == {"stage": "production"}
    bentoml.models.delete(tag, **store)
    assert bentoml.models.list(**store) == []


def test_a_moved_symbol_names_itself_and_the_bentoml_version(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(bp.SYMBOLS, "ModelStore", "bentoml._internal.no_such_module")
    with pytest.raises(SeqrecError) as err:
        bp.private("ModelStore")
    message = str(err.value)
    assert "bentoml._internal.no_such_module.ModelStore" in message
    assert f"BentoML {bp.bentoml_version()}" in message
    assert bp.bentoml_version()[0].isdigit()
