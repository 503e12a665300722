"""SIGKILL during a model save: the store never holds half a model.

`seqrec train` (the popularity model: quick to train, saved like any other) is killed with the
model's files half written (in its staging directory) and with the model moved into the store
but ``latest`` not yet updated; every model in the store loads, before and after the rerun.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable

from invariants import run, seqrec, store_problems

from seqrec import model_store
from seqrec.config import Workspace

#: files half written in the staging directory; the model moved in, ``latest`` not yet updated
CASES = ("model_store.save", "model_store.publish")


def test_sigkill_during_model_save_leaves_only_whole_models(
    ws: Workspace, outcome: Callable[..., None]
) -> None:
    from seqrec.features.repo import apply
    from seqrec.pipeline import train_model
    from seqrec.testing import load_synth

    load_synth(ws, users=60, items=30)
    apply(ws)
    train_model(ws, "popularity", progress=False)
    train = ("train", "-m", "popularity", "--json", "-p", str(ws.root))
    staging = ws.model_store / ".staging"
    for point in CASES:
        before = {r["tag"] for r in model_store.list_models(ws.model_store)}
        seqrec(*train, kill_at=point)
        assert store_problems(ws.model_store) == [], point
        added = {r["tag"] for r in model_store.list_models(ws.model_store)} - before
        assert len(added) == (1 if point == "model_store.publish" else 0), point
        if point == "model_store.save":
            assert any(staging.iterdir())  # the half-written model, outside the store
    tag = json.loads(seqrec(*train).stdout.strip().splitlines()[-1])["tag"]
    assert store_problems(ws.model_store) == []
    assert not any(staging.iterdir())  # the dead process's staging directory is cleared
    assert model_store.locate("popularity", ws.model_store)[0] == tag
    outcome(
        "SIGKILL during model save",
        "process killed",
        cases=len(CASES),
        result="killed with files half written and before `latest` moved; every stored "
        "model loads, before and after the rerun",
        data_lost="none",
    )


#: a save that copies a model into the store file by file (as BentoML does from its temporary
#: directory), killed after the second file
BROKEN_SAVE = """
import shutil, sys
from pathlib import Path
from seqrec.faults import kill_point

source, target = Path(sys.argv[1]), Path(sys.argv[2])
target.mkdir(parents=True)
for f in sorted(source.iterdir()):
    shutil.copy(f, target / f.name)
    kill_point("model_store.save")
"""


def test_the_store_check_reports_a_non_atomic_save_killed_midway(
    ws: Workspace, outcome: Callable[..., None]
) -> None:
    from seqrec.features.repo import apply
    from seqrec.pipeline import train_model
    from seqrec.testing import load_synth

    load_synth(ws, users=30, items=20)
    apply(ws)
    tag = train_model(ws, "popularity", progress=False).tag
    name, path = tag.split(":")[0], model_store.locate(tag, ws.model_store)[1]
    half = path.parent / "halfwritten"
    run([sys.executable, "-c", BROKEN_SAVE, str(path), str(half)], kill_at="model_store.save:2")
    problems = store_problems(ws.model_store)
    assert any(
        p.startswith(f"{name}:halfwritten is in the store but does not load") for p in problems
    ), problems
    outcome(
        "broken variant: model copied into the store file by file, killed midway",
        "process killed",
        cases=1,
        result=f"the store check catches it ({problems[0][:70]}...)",
        data_lost="none",
    )
