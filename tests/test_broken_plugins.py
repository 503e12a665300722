"""Broken plugins are reported by name (distribution and entry point) and the others keep
working: an entry point that fails to import, hooks that raise, a ``register_models`` that
registers something other than a ModelSpec or returns specs instead of registering them, and
a model whose ``score`` cannot be traced (served eagerly, with a warning naming its plugin).

The plugins are real distributions written into tmp_path and installed as a user would, with
``pip install --target`` (the shared venv is never touched); unit tests register plugin
objects on a fresh manager, the same code path."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from seqrec.cli import build_cli
from seqrec.config import Workspace
from seqrec.hookspecs import hookimpl
from seqrec.models import ModelSpec, model_registry
from seqrec.plugins import PluginWarning, new_plugin_manager, reset_plugin_manager
from seqrec.scaffold import new_plugin
from seqrec.testing import latest_feature_rows, load_synth, make_workspace

VENV_BIN = Path(sys.executable).parent

#: a model whose score reads a length from the data as a Python int: a trace keeps the
#: length it was traced with, so it scores other paddings wrongly
UNTRACEABLE = """
import torch
from torch import nn

from seqrec.hookspecs import hookimpl
from seqrec.models import ModelSpec, SeqModel


class MeanOfSlice(SeqModel):
    def __init__(self, ctx):
        super().__init__(ctx)
        self.emb = nn.Embedding(ctx.n_items, 8, padding_idx=0)

    def next_item_loss(self, batch):
        sel = batch.targets > 0
        return self.item_loss(self.emb(batch.items)[sel], batch.targets[sel], self.emb.weight)

    def next_item_scores(self, batch):
        n = int(batch.mask.sum(1).max())
        scores = self.emb(batch.items[:, -n:]).mean(1) @ self.emb.weight.T
        scores[:, 0] = torch.finfo(scores.dtype).min
        return scores


@hookimpl
def register_models(register):
    register(ModelSpec(name="untraceable", build=MeanOfSlice, defaults={"repeat_bias": False}))
"""

#: distribution -> (entry point name, module source); each is its own seqrec-NAME distribution
BROKEN = {
    "noimport": "import seqrec_dependency_not_installed  # noqa: F401\n",
    "raises": textwrap.dedent(
        """
        from seqrec.hookspecs import hookimpl


        @hookimpl
        def register_models(register):
            raise RuntimeError("model zoo offline")
        """
    ),
    "wrongtype": textwrap.dedent(
        """
        from seqrec.hookspecs import hookimpl


        @hookimpl
        def register_models(register):
            register({"name": "wt", "build": object})
        """
    ),
    "returns": textwrap.dedent(
        """
        from seqrec.hookspecs import hookimpl
        from seqrec.models import ModelSpec, SeqModel


        @hookimpl
        def register_models(register):
            return [ModelSpec(name="returned", build=SeqModel)]
        """
    ),
    "badcommands": textwrap.dedent(
        """
        from seqrec.hookspecs import hookimpl


        @hookimpl
        def register_commands(cli):
            raise KeyError("no such group")
        """
    ),
    "untraceable": UNTRACEABLE,
}
REASONS = {
    "noimport": "ModuleNotFoundError: No module named 'seqrec_dependency_not_installed'",
    "raises": "register_models raised RuntimeError: model zoo offline",
    "wrongtype": "register_models registered a dict",
    "returns": "register_models returned a list instead of calling register(spec)",
    "badcommands": "register_commands raised KeyError",
}
GOOD = "goodone"  # scaffolded with `seqrec plugin new`


def write_dist(root: Path, name: str, source: str) -> Path:
    """A minimal plugin distribution seqrec-NAME with entry point NAME = seqrec_NAME."""
    d = root / f"seqrec-{name}"
    (d / f"seqrec_{name}").mkdir(parents=True)
    (d / f"seqrec_{name}" / "__init__.py").write_text(source)
    (d / "pyproject.toml").write_text(
        textwrap.dedent(
            f"""
            [build-system]
            requires = ["setuptools>=68"]
            build-backend = "setuptools.build_meta"

            [project]
            name = "seqrec-{name}"
            version = "0.1.0"

            [project.entry-points.seqrec]
            {name} = "seqrec_{name}"

            [tool.setuptools]
            packages = ["seqrec_{name}"]
            """
        )
    )
    return d


def pip_install_target(site: Path, *projects: Path) -> None:
    """What a user's ``pip install`` does, into ``site`` instead of the shared venv."""
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation"]
    done = subprocess.run(
        [*cmd, "--target", str(site), *map(str, projects)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every plugin above plus a scaffolded good one, installed into one directory."""
    root = tmp_path_factory.mktemp("broken-plugins")
    src = root / "src"
    projects = [write_dist(src, name, source) for name, source in BROKEN.items()]
    projects.append(new_plugin(GOOD, src))
    pip_install_target(root / "site", *projects)
    return root / "site"


@pytest.fixture
def on_path(site: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The installed plugins visible to this process, with a fresh plugin manager."""
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.delenv("SEQREC_LOAD_PLUGINS", raising=False)
    reset_plugin_manager()
    yield site
    reset_plugin_manager()
    for name in [*BROKEN, GOOD]:
        sys.modules.pop(f"seqrec_{name}", None)


def seqrec_env(site: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEQREC_")}
    env["PYTHONPATH"] = str(site)  # entry points are discovered from PYTHONPATH dirs
    env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = "1"
    return env


def invoke(*args: Any) -> Result:
    return CliRunner().invoke(build_cli(), [str(a) for a in args])


# -- the installed distributions, through the real command line ---------------------------------


def test_seqrec_log_level_debug_shows_the_traceback_behind_a_broken_plugins_warning(
    site: Path,
) -> None:
    env = {**seqrec_env(site), "SEQREC_LOG_LEVEL": "debug"}
    done = subprocess.run(
        [str(VENV_BIN / "seqrec"), "plugins", "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" in done.stderr
    assert "seqrec_dependency_not_installed" in done.stderr  # the noimport plugin's cause


@pytest.mark.slow
def test_seqrec_plugins_lists_the_good_and_names_the_broken(site: Path) -> None:
    done = subprocess.run(
        [str(VENV_BIN / "seqrec"), "plugins", "--json"],
        capture_output=True,
        text=True,
        env=seqrec_env(site),
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    infos = {i["name"]: i for i in json.loads(done.stdout)}
    for name in ("popularity", "gpt2", "lstm", GOOD, "untraceable"):
        assert infos[name]["error"] is None, infos[name]
    assert infos[GOOD]["distribution"] == f"seqrec-{GOOD}"
    for name, reason in REASONS.items():
        info = infos[name]
        assert reason in (info["error"] or ""), info
        assert info["distribution"] == f"seqrec-{name}"
        assert info["entry_point"] == f"{name} = seqrec_{name}"
        assert info["version"] == "0.1.0"
    # each broken plugin warned once, naming its distribution and entry point; no traceback
    assert "Traceback" not in done.stderr
    warned = [line for line in done.stderr.splitlines() if line.startswith("warning: ")]
    for name, reason in REASONS.items():
        origin = f"plugin '{name}' (distribution seqrec-{name} 0.1.0, entry point '{name} = "
        assert sum(origin in line and reason in line for line in warned) == 1, warned


def test_plugins_table_shows_broken_plugins_with_the_reason(on_path: Path) -> None:
    with pytest.warns(PluginWarning):
        result = CliRunner().invoke(build_cli(), ["plugins"], env={"COLUMNS": "300"})
    assert result.exit_code == 0, result.output
    lines = {line.split("│")[1].strip(): line for line in result.stdout.splitlines() if "│" in line}
    assert "ok" in lines[GOOD] and f"seqrec-{GOOD}" in lines[GOOD]
    assert "broken: register_models raised RuntimeError: model zoo offline" in lines["raises"]
    assert "broken: ModuleNotFoundError" in lines["noimport"]


# -- a good model still trains and serves -------------------------------------------------------


@pytest.fixture(scope="module")
def trained(site: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Workspace]:
    """A workspace with features online and the good and the untraceable model trained, with
    every broken plugin installed beside them."""
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(site))
        mp.delenv("SEQREC_LOAD_PLUGINS", raising=False)
        for name in ("SEQREC_PROJECT", "BENTOML_HOME"):  # the CLI sets them: restore after
            mp.setenv(name, os.environ.get(name, ""))
            if not os.environ[name]:
                mp.delenv(name)
        reset_plugin_manager()
        ws = make_workspace(tmp_path_factory.mktemp("ws") / "ws")
        load_synth(ws, users=80, items=40)
        with pytest.warns(PluginWarning):
            for args in (
                ["features", "apply"],
                ["features", "materialize"],
                ["train", "--model", GOOD, "--epochs", "1"],
                ["train", "--model", "untraceable", "--epochs", "1"],
            ):
                result = invoke(*args, "--project", ws.root)
                assert result.exit_code == 0, f"seqrec {' '.join(args)}: {result.output}"
        yield ws
        reset_plugin_manager()


@pytest.mark.slow
def test_good_model_trains_beside_broken_plugins(trained: Workspace, on_path: Path) -> None:
    from seqrec import model_store

    tags = {row["tag"].split(":")[0] for row in model_store.list_models(trained.model_store)}
    assert {f"seqrec-{GOOD}", "seqrec-untraceable"} <= tags


@pytest.mark.slow
def test_untraceable_model_is_served_eagerly_naming_its_plugin(
    trained: Workspace, on_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from seqrec.recommend import Recommender

    with caplog.at_level(logging.WARNING, logger="seqrec.serve"), pytest.warns(PluginWarning):
        rec = Recommender(trained, "untraceable", device="cpu")
    warned = [r.getMessage() for r in caplog.records if "eagerly" in r.getMessage()]
    assert len(warned) == 1, caplog.text
    assert (
        "model 'untraceable' of plugin 'untraceable' (distribution seqrec-untraceable 0.1.0, "
        "entry point 'untraceable = seqrec_untraceable')" in warned[0]
    )
    assert "traceable = False" in warned[0]
    user = str(latest_feature_rows(trained)["user_id"].iloc[0])
    res = rec.recommend(user, k=5)  # served eagerly, by the model itself
    assert res["fallback"] is False and len(res["items"]) == 5


@pytest.mark.slow
def test_plugin_check_names_the_failed_check_and_plugin(on_path: Path) -> None:
    with pytest.warns(PluginWarning):
        result = invoke("plugin", "check", "untraceable")
    assert result.exit_code == 1
    assert "FAIL check_traceable" in result.stdout
    assert "ok   check_model_contract" in result.stdout
    assert "distribution seqrec-untraceable 0.1.0" in result.output


# -- each failure on a fresh manager (the code path entry points take) --------------------------


def _plugin(**hooks: Callable[..., Any]) -> object:
    """A plugin object with the given hook implementations."""
    return type("P", (), {k: staticmethod(hookimpl(v)) for k, v in hooks.items()})()


def _manager_with(name: str, plugin: object) -> Any:
    pm = new_plugin_manager(load_entrypoints=False)
    pm.register(plugin, name=name)
    return pm


def _spec(name: str) -> ModelSpec:
    from seqrec.default_plugins.popularity import Popularity

    return ModelSpec(name=name, build=Popularity)


@pytest.mark.parametrize(
    ("hook", "reason"),
    [
        (lambda register: 1 / 0, "register_models raised ZeroDivisionError: division by zero"),
        (lambda register: register("gpt9"), "register_models registered a str ('gpt9')"),
        (lambda register: [_spec("x")], "register_models returned a list instead of"),
        (lambda register: register(_spec("bad name!")), "model name 'bad name!' is not a name"),
        (
            lambda register: register(ModelSpec(name="t", build=_spec, tasks=("next_item",))),
            "tasks ('next_item',) are not a non-empty selection",
        ),
    ],
    ids=["raises", "not-a-spec", "returns", "bad-name", "unknown-task"],
)
def test_register_models_failure_breaks_only_its_plugin(
    hook: Callable[..., Any], reason: str
) -> None:
    pm = _manager_with("bad", _plugin(register_models=hook))
    with pytest.warns(PluginWarning, match=r"seqrec plugin 'bad' broke: ") as record:
        specs = model_registry(pm)
    assert reason in pm.failures["bad"]
    assert len(record) == 1 and reason in str(record[0].message)
    assert {"popularity", "markov"} <= set(specs)  # the other plugins' models
    assert pm.get_plugin("bad") is None  # unregistered: none of its hooks run again
    infos = {i.name: i for i in pm.describe()}
    assert infos["bad"].error == pm.failures["bad"]
    assert set(model_registry(pm)) == set(specs)  # no second warning, same models


def test_a_plugin_that_registered_some_models_before_failing_registers_none() -> None:
    def hook(register: Callable[[ModelSpec], None]) -> None:
        register(_spec("first"))
        raise ValueError("second one broke")

    pm = _manager_with("half", _plugin(register_models=hook))
    with pytest.warns(PluginWarning):
        assert "first" not in model_registry(pm)


def test_register_commands_failure_breaks_only_its_plugin() -> None:
    import click

    def boom(cli: click.Group) -> None:
        raise RuntimeError("cannot add commands")

    def fine(cli: click.Group) -> None:
        cli.add_command(click.Command("hello", callback=lambda: None))

    pm = _manager_with("bad", _plugin(register_commands=boom))
    pm.register(_plugin(register_commands=fine), name="fine")
    group = click.Group()
    with pytest.warns(PluginWarning, match="register_commands raised RuntimeError"):
        pm.call_each("register_commands", cli=group)
    assert "hello" in group.commands
    assert "cannot add commands" in pm.failures["bad"] and "fine" not in pm.failures
