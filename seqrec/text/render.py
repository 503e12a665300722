"""Behaviour as text: a user's event sequence rendered as one sentence for a language model.

Each event becomes ``"<verb> <title> <when>"`` and the events are joined with ``"; "``, oldest
first, newest last::

    viewed Toy Story (1995) [Animation, Comedy] 3 days ago; purchased Heat (1995) [Action] 2 h ago

* ``<verb>``: the event type in the past tense (:data:`VERBS`: ``view`` -> ``viewed``,
  ``cart`` -> ``added to cart``, ``purchase`` -> ``purchased``, ``rating`` -> ``rated``, ...);
  another name is used as written, ``_`` and ``-`` as spaces;
* ``<title>``: the item's display title (:func:`seqrec.text.titles.item_titles`: title,
  release year, category; ``item <id>`` for an item without text);
* ``<when>``: how long before the prediction time the event happened (:func:`time_ago`:
  ``just now``, ``5 min ago``, ``3 h ago``, ``1 day ago``, ``2 weeks ago``, ``4 months ago``,
  ``2 years ago``); left out when the event has no time.

The prediction time is the example's cutoff when training and the request time when serving;
without one, the newest event's time. A sequence too long for the model is cut from the oldest
end, whole events at a time (:func:`keep_newest`): the newest events always stay.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

SEPARATOR = "; "
#: event type name -> the verb used in the text (names not listed are used as written)
VERBS: dict[str, str] = {
    "view": "viewed",
    "click": "clicked",
    "cart": "added to cart",
    "add_to_cart": "added to cart",
    "addtocart": "added to cart",
    "remove_from_cart": "removed from cart",
    "wishlist": "wishlisted",
    "purchase": "purchased",
    "buy": "bought",
    "order": "ordered",
    "transaction": "bought",
    "rating": "rated",
    "rate": "rated",
    "like": "liked",
    "dislike": "disliked",
    "search": "searched",
    "play": "played",
    "listen": "listened to",
    "watch": "watched",
    "read": "read",
    "share": "shared",
    "review": "reviewed",
}

MINUTE, HOUR, DAY = 60, 3600, 86_400


def event_verb(name: str) -> str:
    """The past-tense verb of an event type name (see :data:`VERBS`)."""
    key = name.strip().lower()
    return VERBS.get(key, key.replace("_", " ").replace("-", " ")) or "event"


def _n(k: int, unit: str) -> str:
    return f"{k} {unit}" + ("" if k == 1 else "s")


def time_ago(seconds: float) -> str:
    """``seconds`` before the prediction time, in words (negative: ``just now``)."""
    s = max(0.0, float(seconds))
    if s < MINUTE:
        return "just now"
    if s < HOUR:
        return f"{int(s // MINUTE)} min ago"
    if s < DAY:
        return f"{int(s // HOUR)} h ago"
    days = int(s // DAY)
    if days < 14:
        return _n(days, "day") + " ago"
    if days < 60:
        return _n(days // 7, "week") + " ago"
    if days < 730:
        return _n(days // 30, "month") + " ago"
    return _n(days // 365, "year") + " ago"


def render_event(verb: str, title: str, ago: float | None) -> str:
    """One event: ``"<verb> <title> <when>"`` (no ``<when>`` when ``ago`` is None)."""
    return f"{verb} {title}" + ("" if ago is None else f" {time_ago(ago)}")


def event_texts(
    items: np.ndarray,
    types: np.ndarray,
    times: np.ndarray,
    titles: Sequence[str],
    type_names: Sequence[str],
    now: float | None = None,
) -> list[str]:
    """The events of one left-padded sequence (``items``/``types``/``times`` [L]; 0 =
    padding) as texts, oldest first. ``titles[i]``/``type_names[t]`` name item index ``i``
    and type index ``t`` (``item <i>``/``event <t>`` past their end); times are epoch seconds
    (0 = unknown), ``now`` the prediction time (None: the newest event's time)."""
    real = np.flatnonzero(np.asarray(items) > 0)
    if now is None or now <= 0:
        known = [float(times[j]) for j in real if times[j] > 0]
        now = max(known) if known else None
    out = []
    for j in real:
        i, t, ts = int(items[j]), int(types[j]), float(times[j])
        title = titles[i] if i < len(titles) and titles[i] else f"item {i}"
        name = type_names[t] if 0 < t < len(type_names) and type_names[t] else f"event {t}"
        ago = None if now is None or ts <= 0 else now - ts
        out.append(render_event(event_verb(name), title, ago))
    return out


def keep_newest(counts: Sequence[int], budget: int, separator_tokens: int = 1) -> int:
    """How many of the newest events fit ``budget`` tokens: ``counts`` are the events' token
    counts (oldest first), ``separator_tokens`` what each ``"; "`` between two costs. At
    least one (the newest) whenever there is one; its text is then cut by the tokenizer."""
    used, kept = 0, 0
    for c in reversed(counts):
        cost = c + (separator_tokens if kept else 0)
        if kept and used + cost > budget:
            break
        used += cost
        kept += 1
    return kept


def render_sequence(
    events: Sequence[str],
    *,
    budget: int | None = None,
    count_tokens: Callable[[Sequence[str]], Sequence[int]] | None = None,
    separator_tokens: int = 1,
) -> str:
    """``events`` (oldest first) joined with ``"; "``; with ``budget`` and ``count_tokens``
    (token counts of texts), only the newest events that fit ``budget`` tokens."""
    events = list(events)
    if budget is not None and count_tokens is not None and events:
        n = keep_newest(list(count_tokens(events)), budget, separator_tokens)
        events = events[len(events) - n :]
    return SEPARATOR.join(events)


__all__ = [
    "SEPARATOR",
    "VERBS",
    "event_texts",
    "event_verb",
    "keep_newest",
    "render_event",
    "render_sequence",
    "time_ago",
]
