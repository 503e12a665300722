"""Property tests of label text: classification label definitions (``--label churn:30d``) and
model label selectors (``stage=production``). Any string is either parsed or a SeqrecError."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from outcomes import Recorder
from propgen import INJECTIONS, broken_variant, examples, note, tally

from seqrec.errors import SeqrecError
from seqrec.training.labels import MAX_HORIZON_S, parse_label

pytestmark = pytest.mark.property

KINDS = ("purchase-within", "churn", "next-event-type")
UNITS = {"h": 3600, "d": 86400, "w": 7 * 86400}


@st.composite
def label_texts(draw: Any) -> tuple[str, int | None]:
    """Label text near the grammar ``kind[:<n><h|d|w>]`` and the horizon in seconds it must
    give (None: it must be refused)."""
    kind = draw(st.sampled_from([*KINDS, *KINDS, "Churn", "churn ", "clicks", "", *INJECTIONS]))
    digits = draw(
        st.one_of(
            st.integers(0, 10**6).map(str),
            st.integers(1, 99).map(lambda n: "0" * 3 + str(n)),
            st.sampled_from(["", "-1", "1.5", "٣", "３", "1e3", "9" * 5000, " 7"]),
        )
    )
    unit = draw(st.sampled_from([*UNITS, *UNITS, "", "D", "m", "dd", " d"]))
    form = draw(st.sampled_from(["horizon", "horizon", "none", "extra colon"]))
    pad = draw(st.sampled_from(["", " ", "\t\n"]))
    if form == "none":
        text, want = kind, (7 * 86400 if kind == "next-event-type" else None)
    else:
        text = f"{kind}:{digits}{unit}" + (":1d" if form == "extra colon" else "")
        good = (
            kind in KINDS
            and form == "horizon"
            and digits.isascii()
            and digits.isdigit()
            and unit in UNITS
            and 0 < int(digits[:20]) * UNITS[unit] <= MAX_HORIZON_S
        )
        want = int(digits) * UNITS[unit] if good else None
    return pad + text + pad, want


def check_label(text: str, want: int | None) -> None:
    """``text`` parses to the horizon ``want`` (seconds), or is refused when ``want`` is
    None, with a short error."""
    try:
        label = parse_label(text)
    except SeqrecError as exc:
        note("refused")
        assert want is None, f"{text!r} refused: {exc}"
        assert len(str(exc)) < 400, "the error repeats a long label in full"
        return
    note("parsed")
    assert want is not None, f"{text!r} parsed as {label}"
    assert label.horizon_s == want
    assert label.kind == text.strip().partition(":")[0]


@examples(200)
@given(case=label_texts())
def test_label_definitions_parse_exactly_or_are_refused(
    case: tuple[str, int | None], outcome: Recorder
) -> None:
    check_label(*case)
    tally(outcome, "labels")


@examples(200)
@given(text=st.text(max_size=30) | st.text(":0123456789hdw-", max_size=30))
def test_any_text_is_a_label_or_a_seqrec_error(text: str, outcome: Recorder) -> None:
    try:
        label = parse_label(text)
    except SeqrecError:
        pass
    else:
        assert label.kind in KINDS
        assert 0 < label.horizon_s <= MAX_HORIZON_S
    tally(outcome, "labels")


@examples(200)
@given(text=st.text(max_size=30) | st.text("=,: key value", max_size=20))
def test_any_text_is_a_model_label_selector_or_a_seqrec_error(text: str, outcome: Recorder) -> None:
    from seqrec.labels import parse_selector

    for options in ({}, {"single": True}, {"removals": True}):
        try:
            pairs = parse_selector(text, **options)  # type: ignore[arg-type]
        except SeqrecError:
            continue
        assert pairs and all(k and k == k.strip() for k in pairs)
    tally(outcome, "labels")


def test_the_label_check_catches_horizons_without_the_ten_year_bound(
    monkeypatch: pytest.MonkeyPatch, outcome: Recorder
) -> None:
    """Without the bound, 100,000,000 weeks parses, and the SQL cutoffs it makes later
    overflow."""
    import seqrec.training.labels

    check_label("churn:100000000w", None)
    monkeypatch.setattr(seqrec.training.labels, "MAX_HORIZON_S", 2**63)
    with pytest.raises(AssertionError) as err:
        check_label("churn:100000000w", None)
    report = str(err.value).splitlines()[0]
    assert report.startswith("'churn:100000000w' parsed as"), report
    broken_variant(
        outcome,
        "label definitions without the 10-year horizon bound",
        "'churn:100000000w' parsed: 1.9 million years",
    )
