"""Item text import: CSV and RecBole .item files, idempotence, bad rows, vocabulary indices."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, select

from seqrec.config import Workspace
from seqrec.data.importers import import_file
from seqrec.data.item_text import import_item_file
from seqrec.data.schema import item_meta, items, make_engine
from seqrec.errors import SeqrecError

ITEMS_CSV = (
    "item_id,title,description,category,brand\n"
    "a1,Red running shoes,Light shoes for road running,Shoes,Acme\n"
    "a2,Blue rain jacket,,Outerwear,\n"
    "a3,Espresso machine,Makes coffee,Kitchen,Brew Co\n"
)

ML_ITEM = (
    "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
    "1\tToy Story\t1995\tAnimation Children's Comedy\n"
    "2\tGoldenEye\t1995\tAction Adventure Thriller\n"
    "3\tFour Rooms\t1995\tThriller\n"
)


def write(path: Path, text: str | bytes) -> Path:
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


def engine_of(ws: Workspace) -> Engine:
    return make_engine(ws.events_url)


def meta(engine: Engine) -> dict[str, dict[str, object]]:
    with engine.connect() as conn:
        return {r.item_id: dict(r._mapping) for r in conn.execute(select(item_meta))}


def vocab(engine: Engine) -> dict[str, int]:
    with engine.connect() as conn:
        return {k: int(i) for k, i in conn.execute(select(items.c.item_id, items.c.item_idx))}


def test_csv_import_stores_text_and_extra_columns_as_attributes(ws: Workspace, tmp_path: Path):
    f = write(tmp_path / "items.csv", ITEMS_CSV)
    rep = import_item_file(engine_of(ws), f, "csv")
    assert (rep.rows_read, rep.added, rep.updated, rep.skipped) == (3, 3, 0, 0)
    m = meta(engine_of(ws))
    assert m["a1"]["title"] == "Red running shoes"
    assert m["a1"]["description"] == "Light shoes for road running"
    assert m["a1"]["category"] == "Shoes"
    assert json.loads(str(m["a1"]["attributes"])) == {"brand": "Acme"}
    assert m["a2"]["description"] is None and m["a2"]["attributes"] is None  # empty cells
    assert len({v["text_hash"] for v in m.values()}) == 3


def test_recbole_item_file_gives_title_year_and_genres(ws: Workspace, tmp_path: Path):
    f = write(tmp_path / "ml.item", ML_ITEM)
    rep = import_item_file(engine_of(ws), f, "recbole")
    assert rep.added == 3
    toy = meta(engine_of(ws))["1"]
    assert toy["title"] == "Toy Story"
    assert toy["category"] == "Animation, Children's, Comedy"
    assert json.loads(str(toy["attributes"])) == {
        "genres": ["Animation", "Children's", "Comedy"],
        "release_year": "1995",
    }


def test_items_before_events_get_the_next_free_vocabulary_index(ws: Workspace, tmp_path: Path):
    engine = engine_of(ws)
    ev = write(
        tmp_path / "ev.csv", "user_id,item_id,timestamp\nu1,x9,1700000000\nu1,a2,1700000001\n"
    )
    import_file(engine, ev, "csv")
    assert vocab(engine) == {"x9": 1, "a2": 2}
    rep = import_item_file(engine, write(tmp_path / "items.csv", ITEMS_CSV), "csv")
    assert rep.new_in_vocabulary == 2  # a1 and a3; a2 was known from the events
    assert vocab(engine) == {"x9": 1, "a2": 2, "a1": 3, "a3": 4}
    # events arriving later about a text-only item keep its index
    ev2 = write(
        tmp_path / "ev2.csv", "user_id,item_id,timestamp\nu2,a3,1700000002\nu2,new,1700000003\n"
    )
    import_file(engine, ev2, "csv")
    assert vocab(engine) == {"x9": 1, "a2": 2, "a1": 3, "a3": 4, "new": 5}


def test_reimporting_the_same_file_changes_nothing(ws: Workspace, tmp_path: Path):
    engine = engine_of(ws)
    f = write(tmp_path / "items.csv", ITEMS_CSV)
    import_item_file(engine, f, "csv")
    before, vocab_before = meta(engine), vocab(engine)
    rep = import_item_file(engine, f, "csv")
    assert (rep.added, rep.updated, rep.unchanged, rep.new_in_vocabulary) == (0, 0, 3, 0)
    assert meta(engine) == before and vocab(engine) == vocab_before  # updated_at included


def test_reimport_with_a_changed_title_updates_only_that_item_and_its_hash(
    ws: Workspace, tmp_path: Path
):
    engine = engine_of(ws)
    import_item_file(engine, write(tmp_path / "items.csv", ITEMS_CSV), "csv")
    before = meta(engine)
    changed = ITEMS_CSV.replace("Blue rain jacket", "Blue waterproof jacket")
    rep = import_item_file(engine, write(tmp_path / "items2.csv", changed), "csv")
    assert (rep.added, rep.updated, rep.unchanged) == (0, 1, 2)
    after = meta(engine)
    assert after["a2"]["title"] == "Blue waterproof jacket"
    assert after["a2"]["text_hash"] != before["a2"]["text_hash"]
    assert after["a1"] == before["a1"] and after["a3"] == before["a3"]


BAD_ROWS = {
    "missing item id": (b"item_id,title\na1,Fine\n,No id here\n", "line 3", "empty item id"),
    "empty title": (b"item_id,title\na1,Fine\na2,  \n", "line 3", "empty title"),
    "bad encoding": (b"item_id,title\na1,Fine\na2,Caf\xe9 latin-1\n", "line 3", "UTF-8"),
    "conflicting duplicate": (
        b"item_id,title\na1,Fine\na2,Other\na1,Different\n",
        "line 4",
        "different text",
    ),
    "over-long id": (b"item_id,title\na1,Fine\n" + b"x" * 257 + b",Long\n", "line 3", "256"),
}


@pytest.mark.parametrize("case", list(BAD_ROWS))
def test_a_bad_row_fails_naming_file_and_line_and_writes_nothing(
    ws: Workspace, tmp_path: Path, case: str
):
    engine = engine_of(ws)
    import_item_file(engine, write(tmp_path / "first.csv", "item_id,title\nz1,Kept\n"), "csv")
    before, vocab_before = meta(engine), vocab(engine)
    content, line, reason = BAD_ROWS[case]
    f = write(tmp_path / "bad.csv", content)
    with pytest.raises(SeqrecError) as err:
        import_item_file(engine, f, "csv")
    msg = str(err.value)
    assert "bad.csv" in msg and line in msg and reason in msg
    assert meta(engine) == before and vocab(engine) == vocab_before


def test_skip_mode_counts_bad_rows_and_imports_the_rest(ws: Workspace, tmp_path: Path):
    content = b"item_id,title\na1,Fine\n,No id\na2,\na3,Caf\xe9\na4,Also fine\na1,Changed\n"
    rep = import_item_file(
        engine_of(ws), write(tmp_path / "bad.csv", content), "csv", on_error="skip"
    )
    assert (rep.rows_read, rep.added, rep.skipped) == (6, 2, 4)
    assert [e.split(":")[0] for e in rep.errors] == ["line 3", "line 4", "line 5", "line 7"]
    assert set(meta(engine_of(ws))) == {"a1", "a4"}
    assert meta(engine_of(ws))["a1"]["title"] == "Fine"  # the first occurrence wins


def test_an_identical_repeated_row_is_not_an_error(ws: Workspace, tmp_path: Path):
    f = write(tmp_path / "dup.csv", "item_id,title\na1,Same\na1,Same\n")
    rep = import_item_file(engine_of(ws), f, "csv")
    assert (rep.rows_read, rep.added, rep.skipped) == (2, 1, 0)


def test_missing_title_column_names_the_header(ws: Workspace, tmp_path: Path):
    f = write(tmp_path / "nohead.csv", "item_id,name\na1,x\n")
    with pytest.raises(SeqrecError, match="missing column 'title'"):
        import_item_file(engine_of(ws), f, "csv")


def test_import_is_idempotent_and_updates_on_both_profiles(profile_ws: Workspace, tmp_path: Path):
    engine = engine_of(profile_ws)
    f = write(tmp_path / "ml.item", ML_ITEM)
    assert import_item_file(engine, f, "recbole").added == 3
    assert import_item_file(engine, f, "recbole").unchanged == 3
    g = write(tmp_path / "ml2.item", ML_ITEM.replace("Four Rooms", "Four Rooms (1995)"))
    rep = import_item_file(engine, g, "recbole")
    assert (rep.updated, rep.unchanged) == (1, 2)
    assert vocab(engine) == {"1": 1, "2": 2, "3": 3}
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(item_meta)).scalar_one() == 3
    with pytest.raises(SeqrecError, match="line 2"):
        import_item_file(
            engine, write(tmp_path / "b.item", ML_ITEM.replace("Toy Story", " ")), "recbole"
        )
    assert meta(engine)["1"]["title"] == "Toy Story"


@pytest.fixture
def cli_project(tmp_path: Path) -> Path:
    from seqrec.config import render_default_config

    (tmp_path / "seqrec.toml").write_text(render_default_config())
    return tmp_path


def _invoke(args: list[str]):  # type: ignore[no-untyped-def]
    from click.testing import CliRunner

    from seqrec.cli import build_cli

    return CliRunner().invoke(build_cli(), args)


def test_cli_import_prints_a_summary_and_bad_rows_exit_cleanly(cli_project: Path):
    f = write(cli_project / "items.csv", ITEMS_CSV)
    res = _invoke(["items", "import", str(f), "--project", str(cli_project)])
    assert res.exit_code == 0, res.output
    assert "read 3 rows, added 3, updated 0, unchanged 0, skipped 0" in res.output
    bad = write(cli_project / "bad.csv", "item_id,title\nq1,\n")
    res = _invoke(["items", "import", str(bad), "--project", str(cli_project)])
    assert res.exit_code == 1 and "bad.csv" in res.output and "line 2" in res.output
    assert "Traceback" not in res.output
    res = _invoke(
        ["items", "import", str(bad), "--on-error", "skip", "--json", "-p", str(cli_project)]
    )
    assert res.exit_code == 0 and json.loads(res.output)["skipped"] == 1


def test_an_item_table_made_by_someone_else_without_seqrec_columns_is_refused(
    ws: Workspace, tmp_path: Path
):
    from sqlalchemy import text

    engine = engine_of(ws)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE item_meta (item_id VARCHAR(256) PRIMARY KEY, name TEXT)"))
    f = write(tmp_path / "items.csv", ITEMS_CSV)
    with pytest.raises(SeqrecError, match="column 'title' is missing"):
        import_item_file(engine, f, "csv")
