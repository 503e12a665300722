"""Property tests of the config loader: generated ``seqrec.toml`` files.

Valid documents are generated from the config schema itself (its JSON schema: types, ranges,
patterns, choices) and must load with their values. A document with exactly one wrong entry
(a wrong type, an out-of-range value, an unknown key or section) must fail with a SeqrecError
naming that key and its line. Broken TOML names the line; arbitrary bytes never give anything
but a SeqrecError naming the file.
"""

from __future__ import annotations

import json
import math
import re
import tempfile
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from outcomes import Recorder
from propgen import broken_variant, examples, note, tally

from seqrec.config import CONFIG_NAME, Config, load_workspace, parse_config
from seqrec.errors import SeqrecError

pytestmark = pytest.mark.property

SCHEMA = Config.model_json_schema()
#: section -> key -> the field's JSON schema (the non-null branch of optional fields)
FIELDS: dict[str, dict[str, dict[str, Any]]] = {}
for _name, _prop in SCHEMA["properties"].items():
    if "$ref" in _prop:
        _section = SCHEMA["$defs"][_prop["$ref"].rsplit("/", 1)[-1]]
        FIELDS[_name] = {
            key: next((b for b in f.get("anyOf", [f]) if b.get("type") != "null"), f)
            for key, f in _section["properties"].items()
        }
PROFILES = SCHEMA["properties"]["profile"]["enum"]


def toml_value(value: Any) -> str:
    """``value`` as a TOML literal."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return "nan" if math.isnan(value) else repr(value)
    if isinstance(value, str):  # a basic string: JSON's escapes are TOML's, DEL must be escaped
        return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(value)


def valid_values(spec: dict[str, Any]) -> Any:
    """Values the field's schema accepts."""
    if "enum" in spec:
        return st.sampled_from(spec["enum"])
    kind = spec["type"]
    if kind == "boolean":
        return st.booleans()
    if kind == "integer":
        return st.integers(spec.get("minimum", -(2**63)), spec.get("maximum", 2**63 - 1))
    if kind == "number":
        low = spec.get("minimum", spec.get("exclusiveMinimum"))
        high = spec.get("maximum", spec.get("exclusiveMaximum"))
        return st.floats(
            low,
            high,
            exclude_min="exclusiveMinimum" in spec,
            exclude_max="exclusiveMaximum" in spec,
            allow_nan=False,
            allow_infinity=False,  # every section refuses inf (allow_inf_nan=False)
        )
    if "pattern" in spec:
        return st.from_regex(spec["pattern"], fullmatch=True)
    return st.text(st.characters(blacklist_categories=("Cs",)), min_size=spec.get("minLength", 0))


#: a literal of each TOML type, to give a field one of another type
OTHER_TYPES = {
    "boolean": "true",
    "integer": "7",
    "number": "2.5",
    "string": '"text"',
    "array": "[1, 2]",
    "table": "{ a = 1 }",
    "datetime": "1979-05-27T07:32:00Z",
}
ACCEPTS = {  # TOML types each schema type takes (strict: a float field takes an integer too)
    "boolean": {"boolean"},
    "integer": {"integer"},
    "number": {"number", "integer"},
    "string": {"string"},
}


def invalid_values(spec: dict[str, Any]) -> Any:
    """TOML literals the field's schema refuses: other types and values out of range."""
    kind = "string" if "enum" in spec else spec["type"]
    bad = [lit for t, lit in OTHER_TYPES.items() if t not in ACCEPTS[kind]]
    if "enum" in spec:
        bad.append('"not-a-choice"')
    for bound, step in (("minimum", -1), ("maximum", 1)):
        if bound in spec:
            bad.append(toml_value(spec[bound] + step))
    for bound in ("exclusiveMinimum", "exclusiveMaximum"):
        if bound in spec:
            bad.append(toml_value(spec[bound]))
    if kind == "number" and ("minimum" in spec or "exclusiveMinimum" in spec):
        bad.append("nan")
    if "pattern" in spec:
        bad += ['"Bad Name!"', '"x; DROP TABLE events; --"', '"a\\"b"', '"seqrec\\n"']
    if spec.get("minLength"):
        bad.append('""')
    return st.sampled_from(bad)


@dataclass
class Doc:
    """A generated seqrec.toml, and the one wrong entry in it, if any."""

    text: str
    values: dict[tuple[str, str], Any] = field(default_factory=dict)
    #: (dotted key the error must name, its line, whether it is an unknown key), or None
    wrong: tuple[str, int, bool] | None = None


BARE_KEY = st.text("abcdefghijklmnopqrstuvwxyz_-0123456789", min_size=1, max_size=8)
MARK = "<wrong>"  # tags the entry (or section) a document gets wrong


@st.composite
def documents(draw: Any, wrong: bool) -> Doc:
    """A document of known sections and keys with valid values; with ``wrong``, exactly one
    entry is wrong: an unknown top-level key, section or key, or a bad value."""
    top: list[tuple[str, str]] = []  # (tag, line)
    body: dict[str, list[tuple[str, str]]] = {}
    values: dict[tuple[str, str], Any] = {}
    if draw(st.booleans()):
        top.append(("", f"profile = {toml_value(draw(st.sampled_from(PROFILES)))}"))
    for section in draw(st.lists(st.sampled_from(sorted(FIELDS)), unique=True)):
        body[section] = []
        for key in draw(st.lists(st.sampled_from(sorted(FIELDS[section])), unique=True)):
            value = draw(valid_values(FIELDS[section][key]))
            values[(section, key)] = value
            body[section].append(("", f"{key} = {toml_value(value)}"))
    if draw(st.booleans()):
        body["hyperparams.gpt2"] = [("", "n_layer = 2"), ("", 'note = "any key goes here"')]
    wrong_key: tuple[str, bool] | None = None
    if wrong:
        kind = draw(st.sampled_from(["top", "section", "key"] + ["value"] * 3))
        other = st.sampled_from(list(OTHER_TYPES.values()))
        if kind == "top":
            key = draw(BARE_KEY.filter(lambda k: k not in SCHEMA["properties"]))
            top.insert(draw(st.integers(0, len(top))), (MARK, f"{key} = {draw(other)}"))
            wrong_key = (key, True)
        elif kind == "section":
            name = draw(BARE_KEY.filter(lambda k: k not in SCHEMA["properties"]))
            body[f"{MARK}{name}"] = [("", "key = 1")]
            wrong_key = (name, True)
        else:
            section = draw(st.sampled_from(sorted(FIELDS)))
            entries = body.setdefault(section, [])
            if kind == "key":
                key = draw(BARE_KEY.filter(lambda k: k not in FIELDS[section]))
                entry = f"{key} = {draw(other)}"
            else:
                key = draw(st.sampled_from(sorted(FIELDS[section])))
                entry = f"{key} = {draw(invalid_values(FIELDS[section][key]))}"
                entries[:] = [e for e in entries if not e[1].startswith(f"{key} = ")]
                values.pop((section, key), None)
            entries.insert(draw(st.integers(0, len(entries))), (MARK, entry))
            wrong_key = (f"{section}.{key}", kind == "key")
    lines, wrong_line = [], 0
    for tag, line in top:
        lines.append(line)
        wrong_line = len(lines) if tag == MARK else wrong_line
    for section, entries in body.items():
        lines += ["", f"[{section.removeprefix(MARK)}]"]
        wrong_line = len(lines) if section.startswith(MARK) else wrong_line
        for tag, line in entries:
            lines.append(line)
            wrong_line = len(lines) if tag == MARK else wrong_line
    text = "".join(line + "\n" for line in lines)
    found = (wrong_key[0], wrong_line, wrong_key[1]) if wrong_key else None
    return Doc(text, values, found)


@examples(50)
@given(doc=documents(wrong=False))
def test_documents_the_schema_accepts_load_with_their_values(doc: Doc, outcome: Recorder) -> None:
    cfg = parse_config(doc.text, source="seqrec.toml")
    for (section, key), value in doc.values.items():
        got = getattr(getattr(cfg, section), key)
        assert got == value, f"{section}.{key}: {got!r} != {value!r}"
    tally(outcome, "config")


def check_wrong_entry(doc: Doc) -> None:
    """``doc``'s one wrong entry is a SeqrecError naming its key and line."""
    assert doc.wrong is not None
    key, line, unknown = doc.wrong
    note("unknown key" if unknown else "wrong type or out of range")
    with pytest.raises(SeqrecError) as err:
        parse_config(doc.text, source="seqrec.toml")
    message = str(err.value)
    kind = "unknown key" if unknown else "bad value for"
    assert f"{kind} '{key}'" in message, message
    assert message.startswith(f"seqrec.toml:{line}: "), f"expected line {line}: {message}"


@examples(50)
@given(doc=documents(wrong=True))
def test_one_wrong_entry_is_an_error_naming_its_key_and_line(doc: Doc, outcome: Recorder) -> None:
    check_wrong_entry(doc)
    tally(outcome, "config")


def test_the_line_check_catches_lines_counted_by_str_splitlines(
    monkeypatch: pytest.MonkeyPatch, outcome: Recorder
) -> None:
    """The config loader as it was: lines counted by ``str.splitlines``, which also breaks at
    \\x85 and \\u2028 inside a string value, so the error names a line past the wrong one."""
    import seqrec.config

    real = seqrec.config._locate
    doc = Doc(
        '[models]\nstore = "a\x85b\u2028c"\n\n[serve]\nport = "x"\n',
        wrong=("serve.port", 5, False),
    )
    check_wrong_entry(doc)
    monkeypatch.setattr(
        seqrec.config, "_locate", lambda text, loc: real("\n".join(text.splitlines()), loc)
    )
    with pytest.raises(AssertionError) as err:
        check_wrong_entry(doc)
    report = str(err.value).splitlines()[0]
    assert report.startswith("expected line 5: seqrec.toml:7: "), report
    broken_variant(
        outcome,
        "a config loader counting lines with str.splitlines",
        "the error names line 7, the wrong entry is on line 5",
    )


def _corruptions() -> Any:
    junk = st.sampled_from(["[", "]", "=", '"', "'", "[[", "= =", "\x00", "\x7f", "key", "\\", "{"])
    return st.tuples(junk, st.integers(0, 10**6), st.booleans())


@examples(50)
@given(doc=documents(wrong=False), corruption=_corruptions())
def test_broken_toml_is_an_error_naming_the_line(
    doc: Doc, corruption: Any, outcome: Recorder
) -> None:
    check_broken_toml(doc, corruption)
    tally(outcome, "config")


def check_broken_toml(doc: Doc, corruption: Any) -> None:
    """``doc`` with junk inserted: broken TOML is a SeqrecError naming the line."""
    junk, where, new_line = corruption
    text = doc.text
    at = where % (len(text) + 1)
    text = text[:at] + ("\n" + junk + "\n" if new_line else junk) + text[at:]
    try:
        tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        at = re.search(r"at line (\d+)", str(exc))  # else: at the end of the document
        line = at.group(1) if at else r"\d+"
        with pytest.raises(SeqrecError) as err:
            parse_config(text, source="seqrec.toml")
        note("broken TOML")
        message = str(err.value)
        assert re.match(rf"seqrec\.toml:{line}: not valid TOML", message), message
        return
    note("still valid TOML")
    try:
        parse_config(text, source="seqrec.toml")
    except SeqrecError as exc:
        assert str(exc).startswith("seqrec.toml")


@examples(50)
@given(
    data=st.one_of(
        st.binary(max_size=120),
        st.text(max_size=60).map(lambda s: s.encode("utf-16")),
        st.text(max_size=60).map(lambda s: s.encode("latin-1", "replace") + b"\xe9"),
        st.sampled_from([b"[train]\nepochs = 2\n", b"\xef\xbb\xbf[train]\n", b"a = \x00"]),
    )
)
def test_any_bytes_as_seqrec_toml_load_or_fail_naming_the_file(
    data: bytes, outcome: Recorder
) -> None:
    with tempfile.TemporaryDirectory(prefix="seqrec-prop-") as tmp:
        (Path(tmp) / CONFIG_NAME).write_bytes(data)
        try:
            load_workspace(tmp)
        except SeqrecError as exc:
            assert str(Path(tmp).resolve() / CONFIG_NAME) in str(exc), str(exc)
            note("refused")
        else:
            note("loaded")
    tally(outcome, "bytes")
