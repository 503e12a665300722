"""Labels on stored models, and the one parser of label text (``stage=production``).

A model reference (``seqrec serve --model``, ``SEQREC_MODEL``, ``seqrec retrain
--production``, the service's reload) is a label selector when it holds ``=``
(:func:`is_selector`); :func:`parse_selector` reads every form of label text seqrec accepts.
Promotion pointers (the ``model_labels`` table) live in :mod:`seqrec.promotion`.
"""

from __future__ import annotations

from seqrec.config import Workspace
from seqrec.errors import SeqrecError


def is_selector(ref: str) -> bool:
    """Whether a model reference is a label selector (``key=value``), not a tag or a name."""
    return "=" in ref


def parse_selector(text: str, *, single: bool = False, removals: bool = False) -> dict[str, str]:
    """Label text -> ``{key: value}``, keys and values stripped; a SeqrecError for bad text.

    Default: a selector ``key=value[,key=value]`` (the models carrying all those labels).
    ``single``: exactly one ``key=value`` with no comma (a promotion pointer's selector, such
    as ``stage=production``). ``removals``: one ``key=value`` to set, where ``key=`` removes
    the label and the value may hold anything (``seqrec label``)."""
    if removals:
        parts, noun, hint = [text], "label", "use key=value (key= removes it)"
    elif single:
        parts, noun, hint = [text], "production label", "use one key=value, e.g. stage=production"
    else:
        parts, noun, hint = text.split(","), "label selector", "use key=value[,key=value]"
    out: dict[str, str] = {}
    for part in parts:
        key, sep, value = part.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key or not (value or removals) or (single and "," in text):
            raise SeqrecError(f"bad {noun} '{text}'", hint=hint)
        out[key] = value
    return out


def one_selector(selector: str) -> tuple[str, str]:
    """``key=value`` (one pair, as :func:`parse_selector` with ``single``) -> (key, value)."""
    ((key, value),) = parse_selector(selector, single=True).items()
    return key, value


def set_labels(ws: Workspace, ref: str, labels: dict[str, str]) -> tuple[str, dict[str, str]]:
    """Add (or, with an empty value, remove) BentoML labels on a stored model; returns (tag,
    its labels now)."""
    import bentoml

    from seqrec.compat.bentoml_private import relabel
    from seqrec.model_store import _store, locate

    tag, _ = locate(ref, ws.model_store)
    return tag, relabel(bentoml.models.get(tag, **_store(ws.model_store)), labels)


def label_model(ws: Workspace, ref: str, labels: dict[str, str]) -> tuple[str, dict[str, str]]:
    """``seqrec label``: pointer selectors (:func:`seqrec.promotion.has_pointer`) move through
    :func:`seqrec.promotion.promote`; a pointer whose model gets another value for its key is
    withdrawn; other labels are set on the model. Every change is recorded."""
    from seqrec import model_store, promotion
    from seqrec.runs import record_label_change, tables

    tag = model_store.locate(ref, ws.model_store)[0]
    reason = "seqrec label"
    plain: dict[str, str] = {}
    for key, value in labels.items():
        selector = f"{key}={value}"
        if value and promotion.has_pointer(ws, selector):
            promotion.promote(ws, tag, selector, reason=reason)
            continue
        for held in promotion.pointers_to(ws, tag):  # it no longer carries that label
            if one_selector(held)[0] == key:
                promotion.withdraw(ws, held, reason=f"{reason}: {tag} {selector}")
        plain[key] = value
    if plain:
        set_labels(ws, tag, plain)
        with tables(ws).begin() as conn:
            for key, value in plain.items():
                record_label_change(conn, f"{key}={value}", None, tag, reason=reason)
    return set_labels(ws, tag, {})
