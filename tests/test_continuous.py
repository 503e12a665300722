"""Continuous operation end to end: three slices of a log arrive, `seqrec retrain` promotes after
each, and a running `bentoml serve` on stage=production switches models while bench/loadgen.py
keeps requests flowing, with no failed request."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from test_service import REPO, free_port, serve_env, serving

from seqrec.testing import import_rows, make_workspace

pytestmark = pytest.mark.integration

SWITCH_DEADLINE_S = 120.0


def _retrain(root: Path) -> dict:
    """`seqrec retrain` as a scheduler runs it; told to promote any candidate (the decision
    rule is tested elsewhere: here every slice must swap the served model)."""
    cmd = [sys.executable, "-m", "seqrec.cli", "retrain", "--project", str(root), "--json"]
    cmd += ["--epochs", "1", "--min-gain", "-1"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=serve_env())
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def _wait_for_model(url: str, tag: str) -> None:
    deadline = time.monotonic() + SWITCH_DEADLINE_S
    while time.monotonic() < deadline:
        status = httpx.get(f"{url}/status", timeout=10).json()
        if status["reload"]["model"] == tag:
            return
        time.sleep(0.25)
    pytest.fail(f"the service did not switch to {tag}: {status}")


@pytest.mark.slow
def test_three_retrains_swap_the_served_model_under_load_with_zero_errors(
    tmp_path: Path,
) -> None:
    from seqrec.data.synth import generate
    from seqrec.features.materialize import materialize
    from seqrec.features.repo import apply
    from seqrec.pipeline import train_model
    from seqrec.promotion import promote

    log = sorted(generate(160, 60, seed=11), key=lambda e: e.ts_ms)
    cut = [int(f * len(log)) for f in (0.7, 0.8, 0.9, 1.0)]
    ws = make_workspace(tmp_path / "ws", "[serve]\nreload_poll_s = 0.5\n")
    import_rows(ws, log[: cut[0]], "base")
    apply(ws)
    materialize(ws)
    first = train_model(ws, "gpt2", epochs=1, progress=False).tag
    promote(ws, first, "stage=production")

    users = sorted({e.user_id for e in log[: cut[0]]})[:50]
    bodies = tmp_path / "bodies.json"
    bodies.write_text(json.dumps([{"user_id": u, "k": 10} for u in users]))
    timeline = tmp_path / "timeline.jsonl"
    exe = str(Path(sys.executable).parent / "bentoml")
    cmd = [exe, "serve", "seqrec.service:SeqrecService", "--host", "127.0.0.1"]
    cmd += ["--port", str(free_port())]
    env = serve_env(SEQREC_PROJECT=str(ws.root), SEQREC_MODEL="stage=production")
    with serving(cmd, env, tmp_path / "serve.log") as srv:
        gen = subprocess.Popen(
            [sys.executable, str(REPO / "bench" / "loadgen.py"), srv.url, "/recommend",
             str(bodies), "2", str(10**9), "--duration", "1800", "--timeline", str(timeline)],
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        promoted = [first]
        try:
            for i in range(3):
                import_rows(ws, log[cut[i] : cut[i + 1]], f"slice-{i}")
                rep = _retrain(ws.root)
                assert rep["promoted"], rep["reason"]
                promoted.append(rep["candidate"])
                _wait_for_model(srv.url, rep["candidate"])
                time.sleep(1.0)  # some answers from this model before the next slice
        finally:
            gen.send_signal(signal.SIGTERM)
            out, _ = gen.communicate(timeout=120)
    summary = json.loads(out)
    rows = [json.loads(line) for line in timeline.read_text().splitlines()]
    assert summary["errors"] == 0, summary
    assert set(summary["status"]) == {"200"}, summary
    assert rows
    answered = [r["model"] for r in sorted(rows, key=lambda r: r["t"] + r["ms"] / 1000)]
    assert set(answered) <= set(promoted)
    assert set(promoted) <= set(answered), "every promoted model answered some requests"
    assert answered[-1] == promoted[-1]
    # the answering tag only moves forward: once a newer model answered, no older one does
    order = {tag: i for i, tag in enumerate(promoted)}
    newest = 0
    late = 0
    for tag in answered:
        if order[tag] < newest:
            late += 1
        newest = max(newest, order[tag])
    assert late <= 2 * 3, "answers finished after the swap may come from the old model only"
