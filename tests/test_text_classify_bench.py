"""bench/text_classify.py's ``--reuse``: rows taken from a saved run, checked against this
run's settings and named on the page (made-up saved results; nothing is trained)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


@pytest.fixture()
def tc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.syspath_prepend(str(BENCH))
    spec = importlib.util.spec_from_file_location("bench_text_classify", BENCH / "text_classify.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_text_classify"] = module
    spec.loader.exec_module(module)
    monkeypatch.setattr(module.report, "RESULTS", tmp_path)
    return module


def row(label: str, model: str, auc: float) -> dict[str, Any]:
    return {
        "label": label,
        "model": model,
        "roc_auc": auc,
        "roc_auc_se": 0.04,
        "f1": 0.7,
        "pr_auc": 0.8,
        "test_examples": 186,
        "train_seconds": 1966.3,
        "train_device": "cpu",
        "infer_ms_per_1k": 82389.0,
        "peak_rss_mb": 7843.0,
        "peak_gpu_mb": None,
    }


def save(tmp_path: Path, **overrides: Any) -> None:
    payload = {
        "machine": {"commit": "abc1234", "date": "2026-12-06T23:57:42+00:00", "cpu": "AMD EPYC"},
        "seed": 0,
        "epochs": 15,
        "text_tokens": 512,
        "results": [row("churn:30d", "text-bert", 0.686), row("churn:30d", "gpt2", 0.739)],
        **overrides,
    }
    (tmp_path / "text_classify.json").write_text(json.dumps(payload))


def test_reuse_takes_only_the_named_models_rows_and_marks_their_origin(
    tc: ModuleType, tmp_path: Path
) -> None:
    save(tmp_path)
    rows = tc.saved_rows({"text-bert"}, seed=0, epochs=15, tokens=512)
    assert list(rows) == [("churn:30d", "text-bert")]
    kept = rows[("churn:30d", "text-bert")]
    assert kept["roc_auc"] == 0.686
    assert kept["reused_from"] == {
        "commit": "abc1234",
        "date": "2026-12-06T23:57:42+00:00",
        "cpu": "AMD EPYC",
    }


@pytest.mark.parametrize(("setting", "value"), [("seed", 1), ("epochs", 10), ("text_tokens", 128)])
def test_reuse_refuses_a_saved_run_with_other_settings_and_names_the_setting(
    tc: ModuleType, tmp_path: Path, setting: str, value: int
) -> None:
    save(tmp_path, **{setting: value})
    with pytest.raises(SystemExit, match=setting):
        tc.saved_rows({"text-bert"}, seed=0, epochs=15, tokens=512)


def test_reuse_of_a_model_the_saved_run_lacks_is_refused(tc: ModuleType, tmp_path: Path) -> None:
    save(tmp_path)
    with pytest.raises(SystemExit, match="no rows for lstm"):
        tc.saved_rows({"text-bert", "lstm"}, seed=0, epochs=15, tokens=512)


def test_reuse_without_saved_results_says_to_run_without_it(tc: ModuleType, tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="run without --reuse"):
        tc.saved_rows({"text-bert"}, seed=0, epochs=15, tokens=512)


def test_page_names_the_reused_rows_and_their_run(tc: ModuleType, tmp_path: Path) -> None:
    save(tmp_path)
    kept = tc.saved_rows({"text-bert"}, seed=0, epochs=15, tokens=512)
    payload = {
        "machine": {
            "commit": "def5678",
            "date": "2026-12-07T20:00:00+00:00",
            "cpu": "Intel Xeon",
            "cores": 2,
            "python": "3.11.7",
            "command": "python bench/text_classify.py --reuse text-bert",
            "versions": {"torch": "2.13.0+cpu", "transformers": "5.23.0", "feast": "0.67.0"},
        },
        "quick": False,
        "epochs": 15,
        "text_tokens": 512,
        "prepared": {"events": 100000, "items_with_text": 1682},
        "results": [*kept.values(), row("churn:30d", "gpt2", 0.795)],
    }
    md = tc.page(payload)
    assert (
        "The text-bert rows are reused from the run of commit abc1234 (2026-12-06, AMD EPYC" in md
    )
    assert "gpt2 rows are reused" not in md
