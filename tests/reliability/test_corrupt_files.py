"""Damaged files: a stored model's files, a training run's checkpoint, the feature snapshot.

Each file is cut short, overwritten with garbage or emptied (a few are also replaced by valid
JSON of the wrong shape). Reading it must be refused with a :class:`SeqrecError` that names the
file, never a traceback from safetensors, pyarrow, json or yaml, and nothing else may be
damaged: the other files stay byte for byte, the other models still load, and once the file is
restored everything works as before. Then the check is shown to catch a loader that swallows
the damage and one that lets the library's error out, and the sources are scanned for weights
read any other way than through safetensors or ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import ast
import hashlib
import json
import random
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import torch
from invariants import offline_problems, store_problems, weights_problems
from tiny import train_tiny

from seqrec import model_store
from seqrec.config import Workspace
from seqrec.errors import SeqrecError
from seqrec.models import CONTEXT_FILE, ModelContext

ROOT = Path(__file__).resolve().parents[2]

#: how a file is damaged: cut short, overwritten with garbage of its size, emptied
DAMAGE: dict[str, Callable[[bytes], bytes]] = {
    "cut short": lambda b: b[: len(b) // 2],
    "overwritten": lambda b: random.Random(len(b)).randbytes(max(len(b), 16)),
    "emptied": lambda b: b"",
}
MODEL_FILES = (
    "model.safetensors",
    "seqrec_model.json",
    "vocab.json",
    "event_types.json",
    "popularity.json",
    "seqrec.json",
    "metrics.json",
    "model.yaml",
)


def refusal_problems(read: Callable[[], Any], path: Path) -> list[str]:
    """Reading the damaged ``path`` must raise a SeqrecError naming it, with no library
    exception chained to it; anything else is a problem (empty: refused as it should be)."""
    try:
        read()
    except SeqrecError as exc:
        problems = []
        if str(path) not in str(exc):
            problems.append(f"the error does not name {path}: {exc}".splitlines()[0])
        if exc.__cause__ is not None or (exc.__context__ and not exc.__suppress_context__):
            problems.append(f"a library's traceback is chained to it: {exc.__context__!r}")
        return problems
    except Exception as exc:
        return [f"a raw {type(exc).__name__} escaped: {exc}".splitlines()[0]]
    return [f"the damaged {path.name} was accepted"]


def digests(root: Path, skip: Path) -> dict[str, str]:
    """SHA-256 of every file under ``root`` except ``skip``."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p != skip
    }


@contextmanager
def damaged(path: Path, how: Callable[[bytes], bytes]) -> Iterator[None]:
    """``path`` damaged by ``how`` meanwhile, restored after."""
    original = path.read_bytes()
    path.write_bytes(how(original))
    try:
        yield
    finally:
        path.write_bytes(original)


# -- the model store ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def store(trained_ws: Workspace, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the trained workspace's model store (gpt2 and popularity) to damage."""
    dest = tmp_path_factory.mktemp("corrupt") / "store"
    shutil.copytree(trained_ws.model_store, dest)
    return dest


def test_damaged_stored_model_files_are_refused_naming_the_file(
    store: Path, outcome: Callable[..., None]
) -> None:
    tag, path = model_store.locate("gpt2", store)
    name = tag.split(":")[0]
    cases: list[tuple[Path, str, Callable[[bytes], bytes]]] = [
        (path / f, kind, how) for f in MODEL_FILES for kind, how in DAMAGE.items()
    ]
    cases += [
        (path / "vocab.json", "10 ids kept", lambda b: json.dumps(json.loads(b)[:10]).encode()),
        (path / "event_types.json", "a dict", lambda b: b'{"view": 1}'),
        (path.parent / "latest", "overwritten", DAMAGE["overwritten"]),
    ]
    problems = []
    for file, kind, how in cases:
        ref = name if file.name == "latest" else tag
        before = digests(store, skip=file)
        with damaged(file, how):
            found = refusal_problems(lambda ref=ref: model_store.load(ref, store=store), file)
            found += [p for p in store_problems(store) if name not in p]  # the others load
            if digests(store, skip=file) != before:
                found.append("other files of the store changed")
        problems += [f"{file.name} {kind}: {p}" for p in found]
    assert problems == []
    assert model_store.load("gpt2", store=store).tag == tag  # restored: loads again
    assert store_problems(store) == []
    outcome(
        "damaged stored model files (weights, config, vocab, BentoML record)",
        "corrupt file",
        cases=len(cases),
        result="each refused with a SeqrecError naming the file; other models and files "
        "intact; loads again once restored",
        data_lost="none",
    )


def test_the_refusal_check_catches_a_loader_that_swallows_or_leaks_the_damage(
    store: Path, outcome: Callable[..., None]
) -> None:
    """The same check against two broken loaders: one that serves fresh weights when the
    stored ones do not load, one that reads the weights with safetensors directly."""
    from safetensors.torch import load_file

    from seqrec.models import get_spec

    tag, path = model_store.locate("gpt2", store)
    weights = path / "model.safetensors"

    def swallowing() -> Any:
        try:
            return model_store.load(tag, store=store)
        except SeqrecError:  # "keep serving": an untrained model of the same shape
            meta = json.loads((path / CONTEXT_FILE).read_text())
            return get_spec(meta["model"]).build(ModelContext(**meta["context"]))

    with damaged(weights, DAMAGE["cut short"]):
        swallowed = refusal_problems(swallowing, weights)
        leaked = refusal_problems(lambda: load_file(str(weights)), weights)
    assert swallowed == ["the damaged model.safetensors was accepted"]
    assert len(leaked) == 1 and leaked[0].startswith("a raw SafetensorError escaped"), leaked
    outcome(
        "broken variant: a model loader that swallows or leaks the damage",
        "corrupt file",
        cases=2,
        result="the refusal check reports both (damage accepted; raw SafetensorError)",
        data_lost="none",
    )


# -- a training run's checkpoint ---------------------------------------------------------------


def test_damaged_checkpoint_files_are_refused_naming_the_file(
    tmp_path: Path, outcome: Callable[..., None]
) -> None:
    from seqrec.training.trainer import BEST_WEIGHTS, CHECKPOINT_DIR, LAST_WEIGHTS, STATE_FILE

    run_dir = tmp_path / "run"
    want = train_tiny(run_dir)
    ckpt = run_dir / CHECKPOINT_DIR
    files = [ckpt / LAST_WEIGHTS, ckpt / BEST_WEIGHTS, ckpt / STATE_FILE]
    problems = []
    for file in files:
        for kind, how in DAMAGE.items():
            before = digests(run_dir, skip=file)
            with damaged(file, how):
                found = refusal_problems(lambda: train_tiny(run_dir, resume=True), file)
                if digests(run_dir, skip=file) != before:
                    found.append("other files of the run changed")
            problems += [f"{file.name} {kind}: {p}" for p in found]
    assert problems == []
    got = train_tiny(run_dir, resume=True)  # restored: resumes to the same weights
    assert weights_problems(got, want) == []
    outcome(
        "damaged checkpoint files (last and best weights, trainer state) on --resume",
        "corrupt file",
        cases=len(files) * len(DAMAGE),
        result="each refused with a SeqrecError naming the file; the run resumes to the same "
        "weights once restored",
        data_lost="none",
    )


def test_the_refusal_check_catches_a_resume_that_reads_or_skips_a_damaged_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, outcome: Callable[..., None]
) -> None:
    """The same check against two broken resumes: one that reads the trainer state with
    torch.load directly, one that starts over when the checkpoint does not load."""
    from seqrec.training import trainer

    class StartsOver(trainer.Checkpointer):
        @property
        def exists(self) -> bool:
            try:
                self.load()
            except SeqrecError:
                return False  # "nothing to resume": the damage goes unnoticed
            return True

    run_dir = tmp_path / "run"
    train_tiny(run_dir)
    state = run_dir / trainer.CHECKPOINT_DIR / trainer.STATE_FILE
    found = {}
    with damaged(state, DAMAGE["cut short"]):
        assert refusal_problems(lambda: train_tiny(run_dir, resume=True), state) == []
        for name, attr, broken in (
            ("leaks", "read_state", lambda path: torch.load(path, weights_only=True)),
            ("swallows", "Checkpointer", StartsOver),
        ):
            with monkeypatch.context() as m:
                m.setattr(trainer, attr, broken)
                found[name] = refusal_problems(lambda: train_tiny(run_dir, resume=True), state)
    assert found["swallows"] == [f"the damaged {state.name} was accepted"], found
    assert len(found["leaks"]) == 1 and found["leaks"][0].startswith(TORCH_RAW), found
    outcome(
        "broken variant: a resume that reads the damaged trainer state raw, or starts over",
        "corrupt file",
        cases=2,
        result=f"the refusal check reports both ({found['leaks'][0].split(':')[0]}; damage "
        "accepted)",
        data_lost="none",
    )


#: what torch.load itself raises for a damaged file
TORCH_RAW = tuple(f"a raw {e} escaped" for e in ("OSError", "RuntimeError", "UnpicklingError"))


# -- the embedded profile's feature snapshot ---------------------------------------------------


def _page_damaged(b: bytes) -> bytes:
    """1 KB in the middle zeroed: the footer is intact, a data page is not."""
    mid, n = len(b) // 2, min(1024, len(b) // 4)
    return b[:mid] + bytes(n) + b[mid + n :]


def test_a_damaged_feature_snapshot_is_refused_naming_it_and_rebuilt_from_the_events(
    tmp_path: Path, outcome: Callable[..., None]
) -> None:
    from seqrec.features.definitions import SNAPSHOT_FILE
    from seqrec.features.repo import apply
    from seqrec.features.snapshots import META_FILE, build_snapshot, ensure_snapshot, latest_rows
    from seqrec.testing import load_synth, make_workspace
    from seqrec.training.data import build_next_item_data

    ws = make_workspace(tmp_path / "ws")
    load_synth(ws, users=60, items=30)
    apply(ws)
    build_snapshot(ws)
    snap, meta = ws.snapshot_dir / SNAPSHOT_FILE, ws.snapshot_dir / META_FILE
    problems = []
    for kind, how in [*DAMAGE.items(), ("page zeroed", _page_damaged)]:
        original, info = snap.read_bytes(), meta.read_bytes()
        snap.write_bytes(how(original))
        found = refusal_problems(lambda: latest_rows(ws), snap)
        if kind == "page zeroed":  # the footer is whole: training reads it, and is refused
            found += refusal_problems(lambda: build_next_item_data(ws), snap)
            assert meta.read_bytes() == info
            build_snapshot(ws)  # `seqrec features build`
        else:
            ensure_snapshot(ws)  # what materialize and training call first: rebuilt
        found += offline_problems(ws)
        problems += [f"{kind}: {p}" for p in found]
    assert problems == []
    outcome(
        "damaged feature snapshot (Parquet) of the embedded profile",
        "corrupt file",
        cases=len(DAMAGE) + 1,
        result="reads refused with a SeqrecError naming the file; a file cut short or "
        "overwritten is rebuilt from the events by the next command, a damaged page by "
        "`seqrec features build`; then equal to the SQL truth",
        data_lost="none",
    )


def test_the_refusal_check_catches_a_snapshot_read_without_its_damage_check(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, outcome: Callable[..., None]
) -> None:
    """The snapshot reader with its footer check and error wrapping taken out: pyarrow's own
    error escapes."""
    import pandas as pd

    from seqrec.features import snapshots
    from seqrec.features.definitions import SNAPSHOT_FILE
    from seqrec.features.repo import apply
    from seqrec.testing import load_synth, make_workspace

    ws = make_workspace(tmp_path / "ws")
    load_synth(ws, users=30, items=20)
    apply(ws)
    snapshots.build_snapshot(ws)
    snap = ws.snapshot_dir / SNAPSHOT_FILE
    with damaged(snap, DAMAGE["cut short"]):
        assert refusal_problems(lambda: snapshots.latest_rows(ws), snap) == []
        monkeypatch.setattr(snapshots, "read_snapshot", lambda ws: pd.read_parquet(snap))
        problems = refusal_problems(lambda: snapshots.latest_rows(ws), snap)
    assert len(problems) == 1 and problems[0].startswith("a raw ArrowInvalid"), problems
    outcome(
        "broken variant: feature snapshot read without its damage check",
        "corrupt file",
        cases=1,
        result=f"the refusal check catches it ({problems[0].split(':')[0]})",
        data_lost="none",
    )


# -- how weights are read ------------------------------------------------------------------------

UNPICKLERS = {"pickle.load", "pickle.loads", "dill.load", "dill.loads", "joblib.load"}
UNPICKLERS |= {"cloudpickle.load", "cloudpickle.loads"}


def unsafe_loads(source: str, name: str) -> list[str]:
    """Calls in ``source`` that can unpickle arbitrary objects: ``torch.load`` without
    ``weights_only=True``, pickle-family loads, ``np.load(allow_pickle=True)``."""
    tree = ast.parse(source, name)
    torch_load = {"torch.load"}
    for node in ast.walk(tree):  # from torch import load [as x]
        if isinstance(node, ast.ImportFrom) and node.module == "torch":
            torch_load |= {a.asname or a.name for a in node.names if a.name == "load"}
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        fn = ast.unparse(node.func)
        kw = {k.arg: k.value for k in node.keywords}
        safe = isinstance(kw.get("weights_only"), ast.Constant) and kw["weights_only"].value
        pickled = isinstance(kw.get("allow_pickle"), ast.Constant) and kw["allow_pickle"].value
        if (
            (fn in torch_load and safe is not True)
            or fn in UNPICKLERS
            or (fn in ("np.load", "numpy.load") and pickled)
        ):
            found.append(f"{name}:{node.lineno}: {ast.unparse(node)}")
    return found


#: a module reading weights in the ways the scan must report
UNSAFE_SOURCE = """
import pickle
import torch
from torch import load as tl
w = torch.load(p)
s = tl(p, weights_only=False)
o = pickle.loads(b)
"""


def test_weights_are_read_only_through_safetensors_or_weights_only_torch_load(
    outcome: Callable[..., None],
) -> None:
    sources = sorted(
        p
        for d in ("seqrec", "plugins")
        for p in (ROOT / d).rglob("*.py")
        if not any(part.startswith((".", "build")) for part in p.relative_to(ROOT).parts)
    )
    found = [hit for p in sources for hit in unsafe_loads(p.read_text(), str(p.relative_to(ROOT)))]
    assert found == []
    outcome(
        "weights read only through safetensors or torch.load(weights_only=True)",
        "corrupt file",
        cases=len(sources),
        result=f"{len(sources)} source files scanned: no other way of reading weights",
        data_lost="none",
    )


def test_the_weights_scan_catches_torch_load_without_weights_only_and_pickle(
    outcome: Callable[..., None],
) -> None:
    found = unsafe_loads(UNSAFE_SOURCE, "broken.py")
    assert [hit.split(": ", 1)[1] for hit in found] == [
        "torch.load(p)",
        "tl(p, weights_only=False)",
        "pickle.loads(b)",
    ], found
    outcome(
        "broken variant: a source reading weights with torch.load(p), weights_only=False and "
        "pickle",
        "corrupt file",
        cases=len(found),
        result=f"the weights scan reports all {len(found)} calls",
        data_lost="none",
    )
