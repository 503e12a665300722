"""The gpt2 plugin passes seqrec's model contract and handles left padding correctly."""

from __future__ import annotations

import torch

from seqrec.models import Batch, ModelContext, get_spec
from seqrec.testing import check_model_contract


def test_gpt2_passes_the_model_contract() -> None:
    check_model_contract("gpt2")
    check_model_contract("gpt2", {"use_event_types": False, "n_layer": 1})


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
