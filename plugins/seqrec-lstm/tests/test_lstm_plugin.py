"""The lstm plugin passes seqrec's model contract and is exact under left padding."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from seqrec_lstm.model import time_gap_buckets

from seqrec.errors import SeqrecError
from seqrec.models import Batch, ModelContext, get_spec
from seqrec.testing import check_batch_independence, check_model_contract, check_vocab_growth


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """Tiny models run fastest single-threaded (and don't fight other processes for cores)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _batch(items: list[int], pad: int) -> Batch:
    """One left-padded row whose events are irregularly spaced in time."""
    seq = torch.tensor([[0] * pad + items])
    times = torch.tensor([[0] * pad + [1_700_000_000 + 7 * i**3 for i in range(len(items))]])
    return Batch(items=seq, types=(seq > 0).long() * 2, times=times)


def test_the_default_gru_passes_the_model_contract() -> None:
    check_model_contract("lstm")
    check_model_contract("lstm", {"repeat_bias": True})
    check_model_contract(
        "lstm",
        {"n_layers": 2, "hidden": 32, "use_event_types": False, "use_time_gaps": False},
    )


def test_the_lstm_cell_passes_the_model_contract() -> None:
    check_model_contract("lstm", {"cell": "lstm"})
    check_model_contract("lstm", {"cell": "lstm", "n_layers": 2, "repeat_bias": True})


def test_the_cell_param_builds_that_cell_and_an_unknown_one_is_a_clear_error() -> None:
    ctx = ModelContext(n_items=20, n_event_types=3, max_len=8, params={"cell": "lstm"})
    assert isinstance(get_spec("lstm").make(ctx).lstm, torch.nn.LSTM)
    assert isinstance(get_spec("lstm").make(ModelContext(20, 3, 8)).lstm, torch.nn.GRU)
    with pytest.raises(SeqrecError, match="cell must be one of lstm, gru, got 'rnn'"):
        get_spec("lstm").make(ModelContext(20, 3, 8, params={"cell": "rnn"}))


def test_models_stored_before_the_cell_option_load_as_lstms() -> None:
    """A stored context has every key its version knew: one without ``cell`` was an LSTM,
    though new models default to the GRU."""
    spec = get_spec("lstm")
    old = {k: v for k, v in spec.defaults.items() if k != "cell"} | {"loss": "full"}
    ctx = ModelContext(n_items=20, n_event_types=3, max_len=8, params=old | {"num_negatives": 8})
    assert isinstance(spec.build(ctx).lstm, torch.nn.LSTM)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_left_padding_does_not_change_scores(cell: str) -> None:
    for task in ("next-item", "classify"):
        torch.manual_seed(0)
        ctx = ModelContext(
            n_items=20, n_event_types=3, max_len=8, task=task, n_classes=2, params={"cell": cell}
        )
        model = get_spec("lstm").make(ctx).eval()
        with torch.no_grad():
            ref = model.score(_batch([3, 4, 5], 0))
            for pad in (1, 5):
                assert torch.allclose(model.score(_batch([3, 4, 5], pad)), ref, atol=1e-5)
            # rows with different padding in one batch agree with the rows scored alone
            mixed = _batch([3, 4, 5], 2)
            mixed.items = torch.cat([mixed.items, _batch([7, 8, 9, 3, 4], 0).items])
            mixed.types = (mixed.items > 0).long() * 2
            mixed.times = torch.cat([mixed.times, _batch([7, 8, 9, 3, 4], 0).times])
            assert torch.allclose(model.score(mixed)[0], ref[0], atol=1e-5)


def test_time_gap_buckets() -> None:
    times = torch.tensor([[0, 100, 100, 101, 1124]])
    buckets = time_gap_buckets(times, times > 0)
    assert buckets.tolist() == [[0, 0, 1, 2, 11]]  # pad, first, gap 0, gap 1, gap 1023


def test_lstm_is_an_entry_point_plugin() -> None:
    assert get_spec("lstm").plugin == "lstm"


def test_lstm_vocab_growth_keeps_known_rows() -> None:
    check_vocab_growth("lstm")


def test_lstm_scores_do_not_depend_on_the_batch() -> None:
    check_batch_independence("lstm")
