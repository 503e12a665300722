"""The private Feast APIs seqrec uses: still where seqrec imports them from, used nowhere else."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from seqrec.compat import feast_private
from seqrec.errors import SeqrecError

PACKAGE = Path(feast_private.__file__).resolve().parents[1]


@pytest.mark.parametrize("name", sorted(feast_private.SYMBOLS))
def test_private_feast_symbol_is_still_importable(name: str) -> None:
    try:
        symbol = feast_private.private(name)
    except SeqrecError as exc:  # names the symbol, its module and the installed Feast version
        pytest.fail(str(exc))
    assert callable(symbol), f"Feast {feast_private.feast_version()}: {name} is not callable"


@pytest.mark.parametrize(
    ("module", "name"),
    [
        ("feast.infra.no_such_module", "serialize_entity_key"),  # the module moved
        ("feast.infra.key_encoding_utils", "no_such_function"),  # the name moved
    ],
)
def test_a_moved_symbol_is_an_error_naming_it_and_the_feast_version(module: str, name: str) -> None:
    with pytest.raises(SeqrecError) as err:
        feast_private.load(module, name)
    assert f"{module}.{name}" in str(err.value)
    assert f"Feast {feast_private.feast_version()}" in str(err.value)


def test_entity_key_ends_with_the_id_and_its_length_as_redis_online_assumes() -> None:
    """RedisOnline.key assembles keys as head + 4-byte little-endian length + id bytes."""
    short = feast_private.entity_key("user_id", "u1", 3)
    long = feast_private.entity_key("user_id", "user-ü-42", 3)
    raw = "user-ü-42".encode()
    assert long.endswith(len(raw).to_bytes(4, "little") + raw)
    assert short[: -(4 + 2)] == long[: -(4 + len(raw))]  # the same head for every id


def test_feature_hash_is_four_bytes_and_differs_by_feature() -> None:
    a = feast_private.feature_hash("user_sequence", "item_seq")
    b = feast_private.feature_hash("user_sequence", "type_seq")
    assert len(a) == len(b) == 4 and a != b


def test_no_module_outside_feast_private_imports_feast_internals() -> None:
    private = re.compile(
        r"^\s*(from|import)\s+feast\.infra\b|^\s*from\s+feast\S*\s+import\s+_", re.M
    )
    offenders = [
        str(path.relative_to(PACKAGE))
        for path in PACKAGE.rglob("*.py")
        if path != Path(feast_private.__file__).resolve() and private.search(path.read_text())
    ]
    assert offenders == [], (
        f"import Feast internals through seqrec.compat.feast_private: {offenders}"
    )
