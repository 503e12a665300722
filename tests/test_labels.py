"""The one parser of label text (:func:`seqrec.labels.parse_selector`) in its three forms."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from seqrec.errors import SeqrecError
from seqrec.labels import is_selector, one_selector, parse_selector


def test_selector_with_several_labels_is_stripped() -> None:
    assert parse_selector(" stage = production ,task=next-item") == {
        "stage": "production",
        "task": "next-item",
    }


def test_value_may_hold_an_equals_sign() -> None:
    assert one_selector("note=a=b") == ("note", "a=b")


@pytest.mark.parametrize("bad", ["stage", "=production", "stage=", "stage=production,", ","])
def test_bad_selector_names_itself(bad: str) -> None:
    with pytest.raises(SeqrecError, match=f"bad label selector '{bad}'") as err:
        parse_selector(bad)
    assert err.value.hint == "use key=value[,key=value]"


@pytest.mark.parametrize("bad", ["stage", "stage=", "a=1,b=2", " =x"])
def test_pointer_selector_is_exactly_one_pair(bad: str) -> None:
    with pytest.raises(SeqrecError, match="bad production label") as err:
        one_selector(bad)
    assert "stage=production" in str(err.value.hint)


def test_removals_allow_an_empty_value_and_commas() -> None:
    assert parse_selector("stage=", removals=True) == {"stage": ""}
    assert parse_selector("team=a,b", removals=True) == {"team": "a,b"}
    with pytest.raises(SeqrecError, match="bad label 'stage'"):
        parse_selector("stage", removals=True)


def test_is_selector_tells_labels_from_tags() -> None:
    assert is_selector("stage=production")
    assert not is_selector("seqrec-gpt2:abc123")
    assert not is_selector("gpt2")


_word = st.text(st.characters(codec="ascii", categories=("L", "N")), min_size=1, max_size=8)


@given(st.dictionaries(_word, _word, min_size=1, max_size=4))
def test_selector_round_trips(labels: dict[str, str]) -> None:
    text = ",".join(f"{k}={v}" for k, v in labels.items())
    assert parse_selector(text) == labels
