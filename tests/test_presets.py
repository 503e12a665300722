"""Presets: the plugin defaults are what `seqrec train` trains; named and workspace presets;
what overrides what."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from seqrec.cli import build_cli
from seqrec.config import Workspace
from seqrec.errors import SeqrecError
from seqrec.models import COMMON_PARAMS, Choice, ModelSpec, Preset, get_spec
from seqrec.presets import find_preset, resolve, save_workspace_preset
from seqrec.testing import make_workspace


def _build(ctx):  # type: ignore[no-untyped-def]
    raise AssertionError("not built in these tests")


@pytest.mark.parametrize("model", ["gpt2", "lstm", "bert"])
def test_no_options_resolve_to_the_plugin_defaults(tmp_path: Path, model: str) -> None:
    ws = make_workspace(tmp_path / "ws", "[train]\nnum_threads = 1")
    # FAST sets epochs and batch_size: drop them so only the preset speaks
    text = (ws.root / "seqrec.toml").read_text()
    text = text.replace("epochs = 2", "# epochs = ...").replace("batch_size = 64", "")
    (ws.root / "seqrec.toml").write_text(text)
    from seqrec.config import load_workspace

    ws = load_workspace(ws.root)
    spec = get_spec(model)
    r = resolve(ws, spec)
    assert r.preset == "default" and r.source == "plugin"
    assert r.params == dict(spec.defaults)
    for key, value in spec.train_defaults.items():
        assert getattr(r.settings, key) == value, key
    assert spec.train_defaults, "a built-in model ships its trainer settings"


def test_repeat_bias_is_on_by_default_for_next_item() -> None:
    assert COMMON_PARAMS["repeat_bias"] is True


def test_toml_train_keys_override_the_preset_and_options_override_both(ws: Workspace) -> None:
    spec = get_spec("gpt2")
    r = resolve(ws, spec)
    assert r.settings.epochs == 2  # the test workspace sets [train] epochs = 2
    assert r.origin["epochs"] == "seqrec.toml [train]"
    assert r.settings.lr == spec.train_defaults["lr"]
    assert r.origin["lr"] == "preset default"
    r = resolve(ws, spec, params={"dropout": 0.1}, overrides={"epochs": 7, "lr": 0.01})
    assert (r.settings.epochs, r.settings.lr, r.params["dropout"]) == (7, 0.01, 0.1)
    assert r.origin["dropout"] == "option"


def test_named_plugin_preset_changes_settings_on_top_of_the_defaults(ws: Workspace) -> None:
    spec = get_spec("gpt2")
    r = resolve(ws, spec, preset="fast")
    assert r.settings.patience == spec.presets["fast"].train["patience"]
    assert r.settings.lr == spec.presets["fast"].train["lr"]
    assert r.params["d_model"] == spec.defaults["d_model"]


def test_unknown_preset_is_refused_naming_the_known_ones(ws: Workspace) -> None:
    with pytest.raises(SeqrecError, match="no preset 'nosuch'") as err:
        resolve(ws, get_spec("gpt2"), preset="nosuch")
    assert "fast" in str(err.value)


def test_workspace_preset_named_default_replaces_the_plugin_defaults(ws: Workspace) -> None:
    spec = get_spec("lstm")
    save_workspace_preset(ws, spec, "default", {"hidden": 32}, {"lr": 0.004})
    name, source, _ = find_preset(ws, spec, None)
    assert (name, source) == ("default", "workspace")
    r = resolve(ws, spec)
    assert r.params["hidden"] == 32 and r.settings.lr == 0.004
    assert r.params["d_model"] == spec.defaults["d_model"]  # the rest stays the plugin's


def test_workspace_preset_with_unknown_keys_is_refused(ws: Workspace) -> None:
    with pytest.raises(SeqrecError, match="unknown key"):
        save_workspace_preset(ws, get_spec("lstm"), "x", {"nosuch": 1}, {})


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("weight_decay", float("inf")),
        ("grad_clip", float("nan")),
        ("lr", -1.0),
        ("epochs", 0),
        ("ema_decay", 1.0),
    ],
)
def test_out_of_range_trainer_setting_in_a_workspace_preset_is_refused_naming_key_and_layer(
    ws: Workspace, key: str, value: float
) -> None:
    path = ws.path("presets") / "lstm.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"hand": {"params": {}, "train": {key: value}}}))
    with pytest.raises(SeqrecError) as err:
        resolve(ws, get_spec("lstm"), preset="hand")
    assert f"trainer setting {key}=" in str(err.value)
    assert "preset hand" in str(err.value)


def test_broken_workspace_preset_file_names_file_and_line(ws: Workspace) -> None:
    path = ws.path("presets") / "gpt2.json"
    path.parent.mkdir(parents=True)
    path.write_text('{"tuned": {"params": {,}}}')
    with pytest.raises(SeqrecError) as err:
        resolve(ws, get_spec("gpt2"), preset="tuned")
    assert "gpt2.json:1" in str(err.value)


def test_spec_refuses_unknown_trainer_settings_and_a_preset_called_default() -> None:
    with pytest.raises(SeqrecError, match="train_defaults"):
        ModelSpec(name="m", build=_build, train_defaults={"learning_rate": 1.0})
    with pytest.raises(SeqrecError, match="may not be called 'default'"):
        ModelSpec(name="m", build=_build, presets={"default": Preset()})
    with pytest.raises(SeqrecError, match="search_space"):
        ModelSpec(name="m", build=_build, search_space={"nosuch": Choice((1, 2))})


def test_train_records_the_preset_and_cli_accepts_it(trained_ws: Workspace) -> None:
    runner = CliRunner()
    res = runner.invoke(
        build_cli(),
        [
            "train",
            "--model",
            "lstm",
            "--preset",
            "fast",
            "--epochs",
            "1",
            "--json",
            "--project",
            str(trained_ws.root),
        ],
    )
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["preset"] == "fast (plugin)"
    from seqrec import model_store

    info = model_store.load(out["tag"], store=trained_ws.model_store).info
    assert info["preset"] == "fast"
    assert info["settings"]["lr"] == get_spec("lstm").presets["fast"].train["lr"]


def test_models_presets_lists_plugin_and_workspace_presets(ws: Workspace) -> None:
    save_workspace_preset(ws, get_spec("gpt2"), "mine", {"dropout": 0.3}, {})
    res = CliRunner().invoke(build_cli(), ["models", "--json", "--project", str(ws.root)])
    assert res.exit_code == 0, res.output
    specs = {s["name"]: s for s in json.loads(res.stdout)}
    presets = specs["gpt2"]["presets"]
    assert presets["default"]["train"] == dict(get_spec("gpt2").train_defaults)
    assert presets["fast"]["source"] == "plugin"
    assert presets["mine"]["source"] == "workspace"
    assert "dropout" in specs["gpt2"]["search_space"]
    assert specs["lstm"]["text_defaults"] == dict(get_spec("lstm").text_defaults)


def test_a_named_preset_wins_over_seqrec_toml_but_not_over_options(tmp_path: Path) -> None:
    ws = make_workspace(tmp_path / "ws", "[train]\npatience = 9")
    spec = get_spec("gpt2")
    assert resolve(ws, spec).settings.patience == 9  # toml over the defaults
    fast = spec.presets["fast"].train["patience"]
    assert resolve(ws, spec, preset="fast").settings.patience == fast
    r = resolve(ws, spec, preset="fast", overrides={"patience": 2})
    assert r.settings.patience == 2


def test_head_count_that_does_not_divide_the_width_is_a_clear_error() -> None:
    from seqrec.models import ModelContext

    for model, key in (("gpt2", "n_head"), ("bert", "n_heads")):
        ctx = ModelContext(n_items=10, n_event_types=3, max_len=8, params={key: 3})
        with pytest.raises(SeqrecError, match="multiple of"):
            get_spec(model).make(ctx)


def test_trainer_settings_given_as_overrides_reach_the_trainer(ws: Workspace) -> None:
    """``train_model(overrides={"epochs": ...})`` is not dropped by the unset ``epochs=``."""
    from seqrec.features.repo import apply
    from seqrec.pipeline import train_model
    from seqrec.testing import load_synth

    load_synth(ws, users=40, items=20)
    apply(ws)
    out = train_model(ws, "lstm", overrides={"epochs": 1, "patience": 1, "seed": 3}, progress=False)
    from seqrec import model_store

    info = model_store.load(out.tag, store=ws.model_store).info
    assert info["settings"]["epochs"] == 1 and info["settings"]["seed"] == 3
    assert out.epochs_run == 1


def test_text_aware_lstm_resolves_its_text_defaults_unless_something_sets_the_key(
    tmp_path: Path,
) -> None:
    spec = get_spec("lstm")
    text_dropout = spec.text_defaults["dropout"]
    assert text_dropout != spec.defaults["dropout"]
    ws = make_workspace(tmp_path / "ws")
    plain = resolve(ws, spec)
    assert plain.params["dropout"] == spec.defaults["dropout"]
    text = resolve(ws, spec, params={"item_text": True})
    assert text.params["dropout"] == text_dropout
    assert text.origin["dropout"] == "preset default (item_text=true)"
    off = resolve(ws, spec, params={"item_text": False})
    assert off.params["dropout"] == spec.defaults["dropout"]
    # an option and seqrec.toml keep their value; a named preset without the key does not
    assert resolve(ws, spec, params={"item_text": True, "dropout": 0.2}).params["dropout"] == 0.2
    assert resolve(ws, spec, preset="fast", params={"item_text": True}).params["dropout"] == (
        text_dropout
    )
    toml = make_workspace(tmp_path / "ws2")
    with (toml.root / "seqrec.toml").open("a") as f:
        f.write("\n[hyperparams.lstm]\ndropout = 0.25\n")
    from seqrec.config import load_workspace

    toml = load_workspace(toml.root)
    assert resolve(toml, spec, params={"item_text": True}).params["dropout"] == 0.25
    # a workspace default preset (a tuned one) is not second-guessed
    save_workspace_preset(ws, spec, "default", {"dropout": 0.4}, {})
    assert resolve(ws, spec, params={"item_text": True}).params["dropout"] == 0.4


def test_text_defaults_apply_when_a_model_is_built_without_resolving() -> None:
    from seqrec.models import ModelContext

    spec = get_spec("lstm")
    text_dropout, id_dropout = spec.text_defaults["dropout"], spec.defaults["dropout"]
    for params, want in (({"item_text": True}, text_dropout), ({}, id_dropout)):
        ctx = ModelContext(n_items=10, n_event_types=3, max_len=8, params=params, text_dim=4)
        model = spec.make(ctx)
        assert model.ctx.params["dropout"] == want
        assert model.dropout.p == want  # what the built model drops
    explicit = ModelContext(
        n_items=10,
        n_event_types=3,
        max_len=8,
        params={"item_text": True, "dropout": 0.1},
        text_dim=4,
    )
    assert spec.make(explicit).dropout.p == 0.1


def test_spec_refuses_text_defaults_for_options_it_does_not_have() -> None:
    with pytest.raises(SeqrecError, match="text_defaults"):
        ModelSpec(name="m", build=_build, defaults={"item_text": False}, text_defaults={"x": 1})
    with pytest.raises(SeqrecError, match="item_text"):
        ModelSpec(name="m", build=_build, defaults={"dropout": 0.1}, text_defaults={"dropout": 1})


def test_text_aware_bert_trains_without_cropped_rows_and_with_more_dropout(
    tmp_path: Path,
) -> None:
    spec = get_spec("bert")
    ws = make_workspace(tmp_path / "ws")
    plain = resolve(ws, spec)
    text = resolve(ws, spec, params={"item_text": True})
    assert plain.params["crop_prob"] > 0
    assert text.params["crop_prob"] == 0.0
    assert text.params["dropout"] > plain.params["dropout"] == spec.defaults["dropout"]
    assert text.origin["dropout"] == "preset default (item_text=true)"
