"""The plugin host: default and entry-point plugins, isolation of broken ones, the registry."""

from __future__ import annotations

import inspect
import json
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from seqrec import __version__, hookspecs
from seqrec.cli import build_cli
from seqrec.errors import SeqrecError
from seqrec.hookspecs import hookimpl
from seqrec.models import ModelContext, ModelSpec, SeqModel, get_spec, model_registry
from seqrec.plugins import get_plugin_manager, new_plugin_manager

BROKEN_SRC = 'raise RuntimeError("brokenplug is broken on purpose")\n'

TOY_SRC = textwrap.dedent(
    """
    import torch

    from seqrec.hookspecs import hookimpl
    from seqrec.models import ModelSpec, SeqModel


    class Toy(SeqModel):
        def next_item_scores(self, batch):
            return torch.zeros(batch.items.shape[0], self.ctx.n_items)


    @hookimpl
    def register_models(register):
        register(ModelSpec(name="toy", build=Toy, description="toy", defaults={"dim": 4}))
    """
)

# implements a hook that seqrec does not define (a typo, or a hook from a newer seqrec)
UNKNOWN_HOOK_SRC = textwrap.dedent(
    """
    from seqrec.hookspecs import hookimpl


    @hookimpl
    def register_modelz(register):
        pass
    """
)


def make_dist(root: Path, dist: str, version: str, ep_name: str, module: str, source: str) -> None:
    """A real installed distribution on disk: ``<dist>-<version>.dist-info`` plus its module."""
    info = root / f"{dist}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text(f"[seqrec]\n{ep_name} = {module}\n")
    (root / f"{module}.py").write_text(source)


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No plugin filter from the caller's environment; forget the modules the tests import."""
    monkeypatch.delenv("SEQREC_LOAD_PLUGINS", raising=False)
    # the CLI writes SEQREC_PROJECT into os.environ; make monkeypatch restore it
    monkeypatch.setenv("SEQREC_PROJECT", "")
    monkeypatch.delenv("SEQREC_PROJECT")
    yield
    for mod in ("brokenplug_mod", "toyplug_mod", "typoplug_mod"):
        sys.modules.pop(mod, None)


@pytest.fixture
def broken_dist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "site"
    make_dist(root, "brokenplug", "0.1", "broken", "brokenplug_mod", BROKEN_SRC)
    monkeypatch.syspath_prepend(str(root))
    return root


@pytest.fixture
def toy_dist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "site"
    make_dist(root, "toyplug", "0.3", "toyplug", "toyplug_mod", TOY_SRC)
    monkeypatch.syspath_prepend(str(root))
    return root


def _invoke(*args: str):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(build_cli(), list(args), catch_exceptions=False)


def test_default_and_entry_point_plugins_load() -> None:
    pm = new_plugin_manager()
    assert pm.get_plugin("popularity") is not None
    assert pm.get_plugin("gpt2") is not None
    assert "gpt2" not in pm.failures
    specs = model_registry(pm)
    assert specs["popularity"].plugin == "popularity"
    assert specs["gpt2"].plugin == "gpt2"


def test_get_plugin_manager_is_cached() -> None:
    assert get_plugin_manager() is get_plugin_manager()


def test_plugins_json_lists_versions_and_hooks() -> None:
    result = _invoke("plugins", "--json")
    assert result.exit_code == 0, result.output
    infos = {i["name"]: i for i in json.loads(result.stdout)}
    assert {"popularity", "gpt2"} <= set(infos)
    assert infos["gpt2"]["version"] == "0.1.0"
    assert "register_models" in infos["gpt2"]["hooks"]
    assert infos["gpt2"]["error"] is None
    assert not infos["gpt2"]["default"]
    assert infos["popularity"]["default"]
    assert infos["popularity"]["version"] == __version__  # built in: ships with core
    assert "register_models" in infos["popularity"]["hooks"]


def test_plugins_table_output() -> None:
    result = _invoke("plugins")
    assert result.exit_code == 0
    assert "gpt2" in result.stdout and "popularity" in result.stdout


def test_broken_plugin_is_isolated_and_reported(broken_dist: Path) -> None:
    with pytest.warns(UserWarning, match="'broken'") as record:
        pm = new_plugin_manager()
    assert any("brokenplug is broken on purpose" in str(w.message) for w in record)
    assert pm.get_plugin("gpt2") is not None
    assert pm.get_plugin("popularity") is not None
    assert pm.get_plugin("broken") is None
    assert set(model_registry(pm)) >= {"gpt2", "popularity"}

    infos = {i.name: i for i in pm.describe()}
    assert infos["broken"].error == "RuntimeError: brokenplug is broken on purpose"
    assert infos["broken"].version == "0.1"
    assert infos["broken"].hooks == []
    assert infos["gpt2"].error is None


def test_broken_plugin_cli_still_works(broken_dist: Path) -> None:
    with pytest.warns(UserWarning, match="'broken'"):
        models = _invoke("models", "--json")
        plugins = _invoke("plugins", "--json")
    assert models.exit_code == 0, models.output
    names = {m["name"] for m in json.loads(models.stdout)}
    assert {"gpt2", "popularity"} <= names
    assert plugins.exit_code == 0, plugins.output
    infos = {i["name"]: i for i in json.loads(plugins.stdout)}
    assert "brokenplug is broken on purpose" in infos["broken"]["error"]


def test_plugin_with_unknown_hook_is_isolated(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "site"
    make_dist(root, "typoplug", "1.0", "typo", "typoplug_mod", UNKNOWN_HOOK_SRC)
    monkeypatch.syspath_prepend(str(root))
    with pytest.warns(UserWarning, match="'typo'"):
        pm = new_plugin_manager()
    assert pm.get_plugin("typo") is None
    assert "register_modelz" in pm.failures["typo"]
    assert set(model_registry(pm)) >= {"gpt2", "popularity"}


def test_third_party_plugin_registers_a_model(toy_dist: Path) -> None:
    pm = new_plugin_manager()
    assert "toyplug" not in pm.failures
    specs = model_registry(pm)
    assert {"toy", "gpt2", "popularity"} <= set(specs)
    toy = specs["toy"]
    assert toy.plugin == "toyplug"
    assert toy.tasks == ("next-item",)
    model = toy.make(ModelContext(n_items=5, n_event_types=2, max_len=4))
    assert model.spec_name == "toy"
    assert model.ctx.params["dim"] == 4
    infos = {i.name: i for i in pm.describe()}
    assert infos["toyplug"].version == "0.3"
    assert infos["toyplug"].hooks == ["register_models"]


def test_third_party_model_in_cli(toy_dist: Path) -> None:
    result = _invoke("models", "--json")
    assert result.exit_code == 0, result.output
    by_name = {m["name"]: m for m in json.loads(result.stdout)}
    assert by_name["toy"]["plugin"] == "toyplug"
    assert by_name["toy"]["defaults"] == {"dim": 4}


def test_load_plugins_empty_loads_no_entry_points(
    monkeypatch: pytest.MonkeyPatch, broken_dist: Path
) -> None:
    monkeypatch.setenv("SEQREC_LOAD_PLUGINS", "")
    pm = new_plugin_manager()
    names = {name for name, _ in pm.list_name_plugin()}
    assert names == {"popularity", "markov"}
    assert pm.failures == {}
    assert set(model_registry(pm)) == {"popularity", "markov"}


def test_load_plugins_selects_named(monkeypatch: pytest.MonkeyPatch, broken_dist: Path) -> None:
    monkeypatch.setenv("SEQREC_LOAD_PLUGINS", "gpt2")
    pm = new_plugin_manager()  # the broken plugin is not selected, so no warning and no failure
    names = {name for name, _ in pm.list_name_plugin()}
    assert names == {"popularity", "markov", "gpt2"}
    assert pm.failures == {}


def test_load_plugins_selects_with_spaces(monkeypatch: pytest.MonkeyPatch, toy_dist: Path) -> None:
    monkeypatch.setenv("SEQREC_LOAD_PLUGINS", " toyplug , ")
    pm = new_plugin_manager()
    assert set(model_registry(pm)) == {"popularity", "markov", "toy"}


def test_load_entrypoints_false() -> None:
    pm = new_plugin_manager(load_entrypoints=False)
    assert set(model_registry(pm)) == {"popularity", "markov"}


def test_duplicate_model_name_names_both_plugins() -> None:
    pm = new_plugin_manager()

    class Dup:
        @hookimpl
        def register_models(self, register):  # type: ignore[no-untyped-def]
            register(ModelSpec(name="gpt2", build=lambda ctx: None))  # type: ignore[arg-type,return-value]

    pm.register(Dup(), name="dupplug")
    with pytest.raises(SeqrecError, match="registered twice") as exc:
        model_registry(pm)
    msg = str(exc.value)
    assert "'gpt2'" in msg and "'dupplug'" in msg


def test_get_spec_unknown_lists_registered() -> None:
    with pytest.raises(SeqrecError, match="no model named 'nosuch'") as exc:
        get_spec("nosuch", new_plugin_manager())
    assert "gpt2" in str(exc.value) and "popularity" in str(exc.value)


def _hookspecs() -> list[tuple[str, object]]:
    return [
        (name, fn)
        for name, fn in inspect.getmembers(hookspecs, inspect.isfunction)
        if hasattr(fn, "seqrec_spec")
    ]


def test_hookspecs_are_found() -> None:
    names = {name for name, _ in _hookspecs()}
    assert {"register_models", "register_commands"} <= names
    pm = new_plugin_manager(load_entrypoints=False)
    assert names == {n for n in pm.hook.__dict__ if not n.startswith("_")}


@pytest.mark.parametrize("name", [name for name, _ in _hookspecs()])
def test_every_hookspec_has_a_docstring(name: str) -> None:
    fn = getattr(hookspecs, name)
    assert (fn.__doc__ or "").strip(), f"hookspec {name} has no docstring"


class _Tiny(SeqModel):
    def next_item_scores(self, batch):  # type: ignore[no-untyped-def]
        return torch.zeros(batch.items.shape[0], self.ctx.n_items)


TINY = ModelSpec(name="tiny", build=_Tiny, tasks=("next-item",), defaults={"dim": 4})


def _ctx(**kw: object) -> ModelContext:
    return ModelContext(n_items=5, n_event_types=2, max_len=4, **kw)  # type: ignore[arg-type]


def test_make_merges_defaults() -> None:
    model = TINY.make(_ctx(params={"dim": 8}))
    assert model.spec_name == "tiny"
    assert model.ctx.params["dim"] == 8
    assert TINY.make(_ctx()).ctx.params["dim"] == 4


def test_make_rejects_unsupported_task() -> None:
    with pytest.raises(SeqrecError, match="does not support task 'classify'") as exc:
        TINY.make(_ctx(task="classify", n_classes=3))
    assert "next-item" in str(exc.value)  # the hint names the supported tasks


def test_context_rejects_unknown_task() -> None:
    with pytest.raises(SeqrecError, match="unknown task 'bogus'"):
        _ctx(task="bogus")


def test_make_rejects_unknown_hyperparameter() -> None:
    with pytest.raises(SeqrecError, match=r"unknown hyperparameter.*'tiny'.*dimm") as exc:
        TINY.make(_ctx(params={"dimm": 2}))
    assert exc.value.hint is not None and "dim" in exc.value.hint
    gpt2 = get_spec("gpt2", new_plugin_manager())
    with pytest.raises(SeqrecError, match=r"unknown hyperparameter.*n_layerz") as exc:
        gpt2.make(_ctx(params={"n_layerz": 2}))
    assert "n_layer" in str(exc.value)
    with pytest.raises(SeqrecError, match=r"unknown hyperparameter.*'popularity': x\b"):
        get_spec("popularity", new_plugin_manager()).make(_ctx(params={"x": 1}))
