"""Item display titles aligned with the item vocabulary, for rendering behaviour as text.

An item's display title is its ``title``, its release year when the attributes carry one
(``release_year`` or ``year``) and the title does not already end with it, and its category in
brackets: ``"Toy Story (1995) [Animation, Children's, Comedy]"``. An item without text is
``"item <item_id>"``.
"""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import Engine, func, inspect, select

from seqrec.config import Workspace
from seqrec.data.schema import item_meta, items

YEAR_KEYS = ("release_year", "year")


def display_title(
    title: str,
    category: str | None = None,
    attributes: dict[str, Any] | None = None,
    *,
    with_category: bool = True,
) -> str:
    """``"<title> (<year>) [<category>]"``, the parts that are known (see the module doc)."""
    out = " ".join(title.split())
    attrs = attributes or {}
    year = next((str(attrs[k]).strip() for k in YEAR_KEYS if attrs.get(k)), "")
    if year and not out.endswith(f"({year})"):
        out += f" ({year})"
    if with_category and category and category.strip():
        out += f" [{' '.join(category.split())}]"
    return out


def item_titles(
    ws: Workspace,
    n_items: int | None = None,
    *,
    engine: Engine | None = None,
    with_category: bool = True,
) -> list[str]:
    """Display titles by item index: ``[n_items]`` strings (default: the whole vocabulary),
    ``""`` for the padding row 0, ``"item <item_id>"`` for an item without text. Items with an
    index of ``n_items`` or more are left out."""
    engine = engine or ws.engine
    has_meta = inspect(engine).has_table(item_meta.name)
    with engine.connect() as conn:
        if n_items is None:
            n_items = int(conn.execute(select(func.max(items.c.item_idx))).scalar() or 0) + 1
        q = select(items.c.item_idx, items.c.item_id).where(items.c.item_idx < n_items)
        rows = conn.execute(q).all()
        meta: dict[str, Any] = {}
        if has_meta:
            m = item_meta.c
            meta = {
                str(r.item_id): r
                for r in conn.execute(select(m.item_id, m.title, m.category, m.attributes))
            }
    out = [""] * n_items
    for idx, iid in rows:
        if idx <= 0:
            continue
        r = meta.get(str(iid))
        if r is None or not str(r.title or "").strip():
            out[idx] = f"item {iid}"
            continue
        attrs = json.loads(r.attributes) if r.attributes else {}
        out[idx] = display_title(
            str(r.title),
            r.category,
            attrs if isinstance(attrs, dict) else {},
            with_category=with_category,
        )
    return out


def event_type_names(
    ws: Workspace, n_types: int | None = None, *, engine: Engine | None = None
) -> list[str]:
    """Event type names by type index (``""`` for padding 0), ``[n_types]`` of them."""
    from seqrec.model_store import read_vocab

    _, names = read_vocab(engine or ws.engine)
    if n_types is None:
        return names
    return (names + [""] * n_types)[:n_types]


__all__ = ["display_title", "event_type_names", "item_titles"]
