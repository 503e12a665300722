"""The bert plugin passes seqrec's model contract, ignores padding and never ranks MASK."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from seqrec_bert.cloze import append_newest, cloze_positions, crop_newest

from seqrec.models import Batch, ModelContext, SeqModel, get_spec
from seqrec.testing import check_batch_independence, check_model_contract, check_vocab_growth


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """Tiny models run fastest single-threaded (and don't fight other processes for cores)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _model(task: str = "next-item", **params: object) -> SeqModel:
    torch.manual_seed(0)
    ctx = ModelContext(
        n_items=20, n_event_types=3, max_len=8, task=task, n_classes=2, params=dict(params)
    )
    return get_spec("bert").make(ctx)


def _batch(rows: list[list[int]], width: int) -> Batch:
    items = torch.tensor([[0] * (width - len(r)) + r for r in rows])
    types = (items > 0).long() * 2
    targets = torch.cat([items[:, 1:], items[:, -1:] % 19 + 1], 1).masked_fill(items == 0, 0)
    return Batch(items=items, types=types, times=torch.zeros_like(items), targets=targets)


def test_bert_passes_the_model_contract() -> None:
    check_model_contract("bert")
    check_model_contract("bert", {"repeat_bias": True, "use_time_gaps": True})
    check_model_contract("bert", {"use_event_types": False, "n_layers": 1, "mask_prob": 0.4})
    check_model_contract("bert", {"use_time_gaps": True, "head_transform": True})
    check_model_contract("bert", {"transition_bias": False})
    check_model_contract("bert", {"crop_prob": 0.0})


def test_time_gaps_and_head_ignore_left_padding() -> None:
    model = _model(use_time_gaps=True, head_transform=True).eval()

    def batch(width: int) -> Batch:
        b = _batch([[3, 4, 5]], width)
        b.times = torch.tensor([[0] * (width - 3) + [1_000, 1_060, 90_000]])
        return b

    with torch.no_grad():
        assert torch.allclose(model.score(batch(3)), model.score(batch(8)), atol=1e-5)


def test_left_padding_does_not_change_scores() -> None:
    for task in ("next-item", "classify"):
        model = _model(task).eval()
        with torch.no_grad():
            ref = model.score(_batch([[3, 4, 5]], 3))
            for width in (4, 8):
                assert torch.allclose(model.score(_batch([[3, 4, 5]], width)), ref, atol=1e-5)


def test_scores_exclude_mask_and_padding() -> None:
    model = _model().eval()
    with torch.no_grad():
        scores = model.score(_batch([[3, 4, 5], [1, 2, 3, 4, 5, 6, 7, 8]], 8))
    assert scores.shape == (2, 20)  # n_items columns: the MASK id (20) is never scored
    assert (scores[:, 0] < -1e30).all() and torch.isfinite(scores[:, 1:]).all()


def test_training_loss_is_finite_for_length_one_sequences() -> None:
    model = _model().train()
    loss = model.loss(_batch([[3], [7], [2, 9]], 8))
    assert torch.isfinite(loss)
    loss.backward()


def test_cloze_helpers() -> None:
    items = torch.tensor([[0, 0, 3], [0, 0, 0]])
    keep = torch.tensor([True, False])
    assert append_newest(items, torch.tensor([9, 9]), keep).tolist() == [[0, 0, 3, 9], [0] * 4]
    torch.manual_seed(0)
    real = append_newest(items, torch.tensor([9, 0]), keep) > 0
    for _ in range(20):
        chosen = cloze_positions(real, mask_prob=0.2, last_prob=0.1)
        assert chosen[0].any() and not chosen[1].any() and not (chosen & ~real).any()


def test_cropping_keeps_an_oldest_part_of_each_row_right_aligned() -> None:
    items = torch.tensor([[0, 0, 1, 2, 3, 4, 5], [0, 0, 0, 0, 0, 7, 8], [0] * 6 + [9], [0] * 7])
    types = items * 10
    torch.manual_seed(0)
    kept_lengths = set()
    for _ in range(50):
        cut, cut_types = crop_newest([items, types], items > 0, prob=1.0)
        assert (cut_types == cut * 10).all()  # every column cut alike
        for row, new in zip(items.tolist(), cut.tolist(), strict=True):
            real = [x for x in row if x]
            kept = [x for x in new if x]
            assert new[: len(new) - len(kept)] == [0] * (len(new) - len(kept))  # left-padded
            assert kept == real[: len(kept)]  # the oldest events, in order
            assert len(kept) >= min(len(real), 2)
        kept_lengths.add(int((cut[0] > 0).sum()))
    assert kept_lengths == {2, 3, 4, 5}  # every cut point of the first row is drawn
    assert (crop_newest([items], items > 0, prob=0.0)[0] == items).all()


def test_rows_are_cropped_in_training_only() -> None:
    batch = _batch([[3, 4, 5, 6, 7, 3, 4], [5, 6, 7, 8]], 8)
    plain, cropped = _model(crop_prob=0.0), _model(crop_prob=1.0)  # the same weights
    losses = {}
    for mode in ("eval", "train"):
        for name, model in (("plain", plain), ("cropped", cropped)):
            model.train(mode == "train")
            torch.manual_seed(1)
            losses[mode, name] = float(model.loss(batch))
    assert losses["eval", "plain"] == losses["eval", "cropped"]
    assert losses["train", "plain"] != losses["train", "cropped"]


def test_a_crop_probability_outside_zero_to_one_is_refused() -> None:
    from seqrec.errors import SeqrecError

    with pytest.raises(SeqrecError, match="crop_prob"):
        _model(crop_prob=1.5)


def test_transition_offsets_train_from_cloze_rows_and_from_newest_only_rows() -> None:
    # no row newest-only (last_mask_prob 0), then every row (1)
    for last in (0.0, 1.0):
        model = _model(transition_bias=True, last_mask_prob=last).train()
        batch = _batch([[3, 4, 5, 3, 4], [3, 4, 5], [4, 5, 3, 4, 5, 3]], 8)
        model.fit_statistics(batch.items, batch.targets)
        model.loss(batch).backward()
        assert model.transitions is not None and model.transitions.table.grad is not None
        assert model.transitions.table.grad.abs().sum() > 0


def test_a_masked_position_sees_the_successors_of_the_visible_item_before_it() -> None:
    from seqrec_bert.model import visible_before

    items = torch.tensor([[0, 0, 3, 4, 5, 6], [7, 8, 9, 10, 11, 12]])
    chosen = torch.tensor(
        [[False, False, True, False, True, True], [True, True, False, False, False, True]]
    )
    # row 0: 3 follows padding, 5 follows the visible 4, 6 follows the masked 5;
    # row 1: 7 is the window's first, 8 follows the masked 7, 12 follows the visible 11
    assert visible_before(items, chosen)[chosen].tolist() == [0, 4, 0, 0, 0, 11]


def test_bert_is_an_entry_point_plugin() -> None:
    assert get_spec("bert").plugin == "bert"


def test_growing_the_vocabulary_moves_the_mask_row_and_keeps_item_rows() -> None:
    """A warm start from a model of 20 items (MASK = 20) into one of 26 (MASK = 26): the MASK
    row moves to 26, items 0..19 (padding 0 among them) keep their rows, and the new items
    20..25 get fresh rows, not the old MASK row; the output bias keeps the known items'."""
    old = _model()
    with torch.no_grad():
        old.out_bias.uniform_(-1, 1)
    torch.manual_seed(1)
    ctx = ModelContext(n_items=26, n_event_types=3, max_len=8)
    new = get_spec("bert").make(ctx)
    assert new.grow_from(old.state_dict(), old.ctx) > 0
    before, after = old.item_weight, new.item_weight
    assert after.shape == (27, before.shape[1]) and new.mask_id == 26
    assert torch.equal(after[26], before[20])
    assert torch.equal(after[:20], before[:20]) and not after[0].any()
    assert not any(torch.equal(after[i], before[20]) for i in range(20, 26))
    assert torch.equal(new.out_bias[:20], old.out_bias) and not new.out_bias[20:].any()


def test_bert_vocab_growth_keeps_known_rows() -> None:
    check_vocab_growth("bert")


def test_bert_scores_do_not_depend_on_the_batch() -> None:
    check_batch_independence("bert")
