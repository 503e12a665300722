"""Behaviour as text: relative times, verbs, titles, event texts and truncation from the oldest
(seqrec.text.render), and display titles aligned with the vocabulary (seqrec.text.titles)."""

from __future__ import annotations

import numpy as np
import pytest

from seqrec.config import Workspace
from seqrec.data.importers import RawEvent, import_events
from seqrec.data.item_text import ItemText, import_items
from seqrec.data.schema import make_engine
from seqrec.text.render import (
    event_texts,
    event_verb,
    keep_newest,
    render_sequence,
    time_ago,
)
from seqrec.text.titles import display_title, event_type_names, item_titles

MIN, HOUR, DAY = 60, 3600, 86_400
T0 = 1_700_000_000


@pytest.mark.parametrize(
    ("seconds", "words"),
    [
        (-5, "just now"),
        (59, "just now"),
        (60, "1 min ago"),
        (59 * MIN + 59, "59 min ago"),
        (2 * HOUR + 5, "2 h ago"),
        (DAY, "1 day ago"),
        (3 * DAY + HOUR, "3 days ago"),
        (13 * DAY, "13 days ago"),
        (14 * DAY, "2 weeks ago"),
        (59 * DAY, "8 weeks ago"),
        (60 * DAY, "2 months ago"),
        (400 * DAY, "13 months ago"),
        (800 * DAY, "2 years ago"),
    ],
)
def test_time_ago_words_at_each_unit_boundary(seconds: float, words: str) -> None:
    assert time_ago(seconds) == words


def test_event_verbs_are_past_tense_and_unknown_names_are_kept() -> None:
    assert event_verb("view") == "viewed"
    assert event_verb("Purchase") == "purchased"
    assert event_verb("cart") == "added to cart"
    assert event_verb("liked") == "liked"
    assert event_verb("add_to_wishlist") == "add to wishlist"


def test_events_render_titles_types_and_times_oldest_first_relative_to_now() -> None:
    titles = ["", "Toy Story (1995) [Animation]", "Heat (1995) [Action]"]
    types = ["", "view", "purchase"]
    items = np.array([0, 0, 1, 2, 3])  # left-padded; item 3 has no title here
    kinds = np.array([0, 0, 1, 2, 1])
    times = np.array([0, 0, T0, T0 + DAY, T0 + 3 * DAY - 2 * HOUR])
    now = T0 + 3 * DAY
    assert event_texts(items, kinds, times, titles, types, now) == [
        "viewed Toy Story (1995) [Animation] 3 days ago",
        "purchased Heat (1995) [Action] 2 days ago",
        "viewed item 3 2 h ago",
    ]
    # without a prediction time: relative to the newest event
    assert event_texts(items, kinds, times, titles, types)[-1] == "viewed item 3 just now"


def test_events_without_a_time_or_a_known_type_still_render() -> None:
    out = event_texts(np.array([1, 2]), np.array([5, 1]), np.array([0, 0]), ["", "A"], ["", "view"])
    assert out == ["event 5 A", "viewed item 2"]


def test_truncation_keeps_the_newest_whole_events_that_fit() -> None:
    # token counts oldest first; separators cost 1 each
    assert keep_newest([3, 3, 3], budget=7) == 2  # 3 + 1 + 3
    assert keep_newest([3, 3, 3], budget=6) == 1
    assert keep_newest([3, 3, 3], budget=11) == 3
    assert keep_newest([50], budget=10) == 1  # the newest always stays
    assert keep_newest([], budget=10) == 0


def test_render_sequence_cuts_from_the_oldest_end_to_the_budget() -> None:
    events = ["viewed a 3 days ago", "viewed b 2 days ago", "purchased c just now"]

    def words(texts: list[str]) -> list[int]:
        return [len(t.split()) for t in texts]

    assert render_sequence(events) == "; ".join(events)
    assert render_sequence(events, budget=10, count_tokens=words) == (  # 5 + 1 + 4
        "viewed b 2 days ago; purchased c just now"
    )
    assert render_sequence(events, budget=9, count_tokens=words) == "purchased c just now"


def test_display_title_adds_year_and_category_once() -> None:
    assert display_title("Toy Story", "Animation, Comedy", {"release_year": "1995"}) == (
        "Toy Story (1995) [Animation, Comedy]"
    )
    assert display_title("Heat (1995)", None, {"year": 1995}) == "Heat (1995)"
    assert display_title("  Red   shoes ", "Shoes", with_category=False) == "Red shoes"


def test_item_titles_are_aligned_with_the_vocabulary(ws: Workspace) -> None:
    engine = make_engine(ws.events_url)
    events = [RawEvent("u1", iid, T0 * 1000 + k, "view", None) for k, iid in enumerate("abc")]
    import_events(engine, enumerate(events, 1), source="test", sha256="", fmt="test")
    rows = [
        (2, ItemText("a", "Toy Story", None, "Animation", {"release_year": "1995"})),
        (3, ItemText("c", "Heat")),
    ]
    import_items(engine, rows, source="items.csv")
    titles = item_titles(ws, engine=engine)
    assert titles == ["", "Toy Story (1995) [Animation]", "item b", "Heat"]
    assert item_titles(ws, 3, engine=engine) == titles[:3]
    assert item_titles(ws, 5, engine=engine)[4] == ""  # past the vocabulary: nothing known
    assert event_type_names(ws, 3, engine=engine) == ["", "view", ""]


def test_item_titles_without_item_text_name_items_by_id(ws: Workspace) -> None:
    engine = make_engine(ws.events_url)
    event = RawEvent("u1", "x9", T0 * 1000, "view", None)
    import_events(engine, [(1, event)], source="test", sha256="", fmt="test")
    assert item_titles(ws, engine=engine) == ["", "item x9"]
