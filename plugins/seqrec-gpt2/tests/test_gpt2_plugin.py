"""The gpt2 plugin passes seqrec's model contract and handles left padding correctly."""

from __future__ import annotations

import torch

from seqrec.models import Batch, ModelContext, get_spec
from seqrec.testing import (
    BATCH_TOLERANCE,
    check_batch_independence,
    check_model_contract,
    check_vocab_growth,
)


def test_gpt2_passes_the_model_contract() -> None:
    check_model_contract("gpt2")
    check_model_contract("gpt2", {"use_time_gaps": True, "repeat_bias": True})
    check_model_contract("gpt2", {"use_event_types": False, "n_layer": 1})
    check_model_contract(
        "gpt2", {"use_time_gaps": True, "attn_dropout": 0.1, "inner": 2, "label_smoothing": 0.1}
    )


def test_time_gaps_ignore_left_padding() -> None:
    torch.manual_seed(0)
    ctx = ModelContext(n_items=20, n_event_types=3, max_len=8, params={"use_time_gaps": True})
    model = get_spec("gpt2").make(ctx).eval()

    def batch(width: int) -> Batch:
        items = torch.tensor([[0] * (width - 3) + [3, 4, 5]])
        times = torch.tensor([[0] * (width - 3) + [1_000, 1_060, 90_000]])
        return Batch(items=items, types=(items > 0).long(), times=times)

    with torch.no_grad():
        assert torch.allclose(model.score(batch(3)), model.score(batch(8)), atol=1e-5)


def test_models_saved_before_new_options_still_build() -> None:
    """A stored context from an older version lacks the newer keys: build must not need them."""
    from seqrec_gpt2.model import GPT2NextItem

    old = {"d_model": 16, "n_layer": 1, "n_head": 2, "dropout": 0.1, "use_event_types": True}
    old |= {"loss": "full", "num_negatives": 8, "label_smoothing": 0.0}
    model = GPT2NextItem(ModelContext(n_items=20, n_event_types=3, max_len=8, params=old))
    assert model.gap_emb is None and model.config.n_inner == 64


def test_left_padding_does_not_change_scores() -> None:
    torch.manual_seed(0)
    model = get_spec("gpt2").make(ModelContext(n_items=20, n_event_types=3, max_len=8)).eval()
    seq = torch.tensor([[3, 4, 5]])
    short = Batch(items=seq, types=torch.ones_like(seq), times=torch.zeros_like(seq))
    padded_items = torch.tensor([[0, 0, 0, 0, 0, 3, 4, 5]])
    padded = Batch(
        items=padded_items, types=(padded_items > 0).long(), times=torch.zeros_like(padded_items)
    )
    with torch.no_grad():
        assert torch.allclose(model.score(short), model.score(padded), atol=1e-5)


def test_gpt2_is_an_entry_point_plugin() -> None:
    assert get_spec("gpt2").plugin == "gpt2"


def test_newest_only_scoring_equals_the_full_forward() -> None:
    """Eval-mode scoring computes the last block for the newest position only: it must give
    the full forward's hidden state, for any padding, and (within the batch tolerance: the
    last bits depend on the CPU) the same answer for equal rows."""
    for task, extra in (("next-item", {}), ("classify", {"use_time_gaps": True, "n_layer": 3})):
        torch.manual_seed(1)
        ctx = ModelContext(
            n_items=300, n_event_types=4, max_len=12, params=extra, task=task, n_classes=3
        )
        model = get_spec("gpt2").make(ctx).eval()
        items = torch.randint(1, 300, (6, 12))
        for row, n in enumerate((12, 1, 5, 11, 7, 7)):
            items[row, : 12 - n] = 0
        items[5] = items[4]  # two equal rows
        items[3, -1] = 0  # padding after real events: the full forward's mask, too
        times = torch.arange(12).repeat(6, 1) * 600 * (items > 0)
        batch = Batch(items=items, types=(items > 0).long() + items % 2, times=times)
        with torch.no_grad():
            full = model.hidden(batch)[:, -1]
            newest = model.newest_hidden(batch)
            scores = model.score(batch)
        assert torch.allclose(full, newest, atol=1e-5)
        torch.testing.assert_close(scores[4], scores[5], rtol=BATCH_TOLERANCE, atol=BATCH_TOLERANCE)
        model.train()  # training keeps the full forward (every position has a loss)
        torch.manual_seed(2)
        with torch.no_grad():
            assert model._newest(batch).shape == newest.shape


def test_gpt2_vocab_growth_keeps_known_rows() -> None:
    check_vocab_growth("gpt2")


def test_gpt2_scores_do_not_depend_on_the_batch() -> None:
    check_batch_independence("gpt2")
    check_batch_independence("gpt2", {"use_time_gaps": True, "n_layer": 3, "repeat_bias": True})


def test_transition_term_is_the_same_in_the_newest_only_path_and_grows_with_the_vocab() -> None:
    """``transition=true`` (FPMC's first-order term) adds the newest item's row to its hidden
    state: the eval-mode newest-only path adds the same row as the full forward, the model
    passes the contract, and a grown vocabulary keeps the known rows."""
    check_model_contract("gpt2", {"transition": True})
    torch.manual_seed(3)
    ctx = ModelContext(n_items=40, n_event_types=3, max_len=6, params={"transition": True})
    model = get_spec("gpt2").make(ctx).eval()
    assert model.transition is not None
    with torch.no_grad():
        assert not model.transition.weight.any()  # starts as the plain model
        model.transition.weight.normal_()
        model.transition.weight[0] = 0  # padding
    items = torch.tensor([[0, 0, 3, 4, 5, 6], [1, 2, 3, 4, 5, 9]])
    batch = Batch(items=items, types=(items > 0).long(), times=torch.zeros_like(items))
    with torch.no_grad():
        full, newest = model.hidden(batch)[:, -1], model.newest_hidden(batch)
        plain = model.backbone(
            inputs_embeds=model._inputs(batch)[0],
            attention_mask=batch.mask.long(),
            position_ids=model._inputs(batch)[1],
        ).last_hidden_state[:, -1]
    assert torch.allclose(full, newest, atol=1e-5)
    assert torch.allclose(full - plain, model.transition.weight[items[:, -1]], atol=1e-5)
    check_vocab_growth("gpt2", {"transition": True})
