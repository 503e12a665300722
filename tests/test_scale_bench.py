"""bench/scale.py's fitting, skipping and reporting on made-up measurements (nothing is run)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


@pytest.fixture(scope="module")
def scale() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_scale", BENCH / "scale.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_scale"] = module
    spec.loader.exec_module(module)
    return module


#: the exponent each stage's made-up seconds and peak RSS grow with
TIME_EXP = {"ingest": 1.0, "build": 1.2, "materialize": 0.8, "train": 1.0, "evaluate": 0.5}
RSS_EXP = {"ingest": 0.0, "build": 0.3, "materialize": 0.1, "train": 0.0, "evaluate": 0.2}


def made_up(scale: ModuleType) -> dict[str, Any]:
    """Results at 1M, 10M and 50M events whose costs follow known power laws, and one size
    skipped."""
    sizes: list[dict[str, Any]] = []
    for n in (1_000_000, 10_000_000, 50_000_000):
        profiles = {}
        for k, profile in enumerate(scale.PROFILES):
            stages = {
                s: {
                    "seconds": (2.0 + k) * (n / 1e6) ** TIME_EXP[s],
                    "peak_rss_mb": 300.0 * (n / 1e6) ** RSS_EXP[s],
                    "tree_peak_mb": 400.0,
                }
                for s in scale.STAGES
            }
            profiles[profile] = {"stages": stages, "disk_mb": n / 1e4, "online_store_mb": 1.0}
        sizes.append({"events": n, "csv_mb": n / 2e4, "profiles": profiles})
    sizes.append({"events": 200_000_000, "skipped": "needs about 9 MB of disk, 1 MB free"})
    return {"config": {"profiles": list(scale.PROFILES), **made_up_config(scale)}, "sizes": sizes}


def machine(**extra: Any) -> dict[str, Any]:
    """A made-up machine record, as report.machine() writes it."""
    return {
        "cpu": "test cpu",
        "cores": 2,
        "python": "3.11",
        "versions": {"torch": "x", "transformers": "y", "feast": "z"},
        "commit": "abc1234",
        "date": "2026-01-01",
        "command": "python bench/scale.py",
        **extra,
    }


def made_up_config(scale: ModuleType) -> dict[str, Any]:
    return {
        "events_per_user": scale.EVENTS_PER_USER,
        "events_per_item": scale.EVENTS_PER_ITEM,
        "max_len": scale.MAX_LEN,
        "model": scale.MODEL,
        "params": scale.PARAMS,
    }


def test_fit_exponent_recovers_the_power_of_a_power_law(scale: ModuleType) -> None:
    sizes = [1e6, 1e7, 5e7]
    for k in (0.5, 1.0, 1.1, 2.0):
        fit = scale.fit_exponent(sizes, [3.0 * s**k for s in sizes])
        assert fit["exponent"] == pytest.approx(k, abs=1e-3)
        assert fit["coefficient"] == pytest.approx(3.0, rel=1e-6)
        assert fit["points"] == 3


def test_fit_exponent_leaves_out_missing_costs_and_needs_two_sizes(scale: ModuleType) -> None:
    fit = scale.fit_exponent([1e6, 1e7, 5e7], [2e6, None, 0.0])
    assert fit is None  # one usable point
    fit = scale.fit_exponent([1e6, 1e7, 5e7], [1.0, 10.0, None])
    assert fit["exponent"] == pytest.approx(1.0) and fit["points"] == 2
    assert scale.fit_exponent([1e6, 1e6], [1.0, 2.0]) is None


def test_fits_give_each_stage_its_exponent(scale: ModuleType) -> None:
    fitted = scale.fits(made_up(scale))
    for profile in scale.PROFILES:
        for stage in scale.STAGES:
            assert fitted[profile][stage]["seconds"]["exponent"] == pytest.approx(
                TIME_EXP[stage], abs=1e-3
            )
            assert fitted[profile][stage]["peak_rss_mb"]["exponent"] == pytest.approx(
                RSS_EXP[stage], abs=1e-3
            )


def test_markdown_shows_costs_exponents_and_skipped_sizes(scale: ModuleType) -> None:
    res = made_up(scale)
    res["sizes"][0]["profiles"]["spark-redis"]["stages"]["train"] = {"failed": "out of memory"}
    md = scale.markdown(res, machine(), "img/scale.png")
    assert md.startswith("## Cost growth with data size")
    assert "| postgres-redis | build | 1.20 | 0.30 |" in md
    assert "| spark-redis | evaluate | 0.50 | 0.20 |" in md
    assert "200,000,000 events: skipped, needs about 9 MB of disk" in md
    assert "failed: out of memory" in md
    assert "![cost against events, log-log](img/scale.png)" in md


def test_plot_writes_a_png(scale: ModuleType, tmp_path: Path) -> None:
    path = scale.plot(made_up(scale), tmp_path / "scale.png")
    assert path is not None and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_size_past_the_disk_memory_or_time_left_is_skipped(
    scale: ModuleType, tmp_path: Path
) -> None:
    done = made_up(scale)["sizes"][:1]  # 1M events measured: 100 MB of disk per profile
    assert scale.skip_reason(10_000_000, done, tmp_path, seconds_left=1e9) is None
    too_long = scale.skip_reason(10_000_000, done, tmp_path, seconds_left=100.0)
    assert too_long and "h left of --max-hours" in too_long
    assert "of disk" in scale.skip_reason(10**13, done, tmp_path, seconds_left=1e9)
    done[0]["profiles"]["postgres-redis"]["stages"]["build"]["tree_peak_mb"] = 1e9
    assert "of memory" in scale.skip_reason(10_000_000, done, tmp_path, seconds_left=1e9)
    # before any size was measured, the disk is judged by DISK_PER_EVENT
    assert "of disk" in scale.skip_reason(10**14, [], tmp_path, seconds_left=1e9)


def test_a_spark_jvm_is_extrapolated_only_up_to_its_heap_cap(scale: ModuleType) -> None:
    """The process's own RSS and PostgreSQL's grow with the data; the child JVM's heap is
    bounded by driver_memory, so its share grows only up to the cap."""
    stage = {"peak_rss_mb": 1000.0, "tree_peak_mb": 5000.0, "postgres_peak_mb": 200.0}
    assert scale.stage_memory_mb(stage, 10.0, child_cap_mb=6144.0) == 10_000.0 + 6144.0
    assert scale.stage_memory_mb(stage, 10.0, child_cap_mb=float("inf")) == 50_000.0
    # a child already past the cap is not shrunk to it
    assert scale.stage_memory_mb(stage, 2.0, child_cap_mb=1000.0) == 2000.0 + 4000.0
    # PostgreSQL's backends, when they are the largest
    assert scale.stage_memory_mb({"postgres_peak_mb": 3000.0}, 3.0, 0.0) == 9000.0
    assert scale.memory_mb("4g") == 4096.0 and scale.memory_mb("512m") == 512.0


def test_added_sizes_keep_the_earlier_ones_and_name_their_invocation(
    scale: ModuleType, tmp_path: Path
) -> None:
    earlier = made_up(scale)["sizes"]
    out = scale.run([], list(scale.PROFILES), "", 1.0, tmp_path, False, earlier=earlier)
    assert [e["events"] for e in out["sizes"]] == [1_000_000, 10_000_000, 50_000_000]
    assert out["fits"]["postgres-redis"]["build"]["seconds"]["exponent"] == pytest.approx(1.2)
    earlier_run = [{"events": [1_000_000], "commit": "0ld0ne", "date": "d", "command": "c"}]
    md = scale.markdown(out, machine(earlier=earlier_run), None)
    assert "1,000,000 events: measured by an earlier invocation" in md and "commit 0ld0ne" in md


def test_the_all_users_ranking_estimate_scales_the_sample_up(scale: ModuleType) -> None:
    ev = {"rank_seconds": 10.0, "users": 20_000, "sampled_from": 200_000}
    assert scale._all_users_rank_s(ev) == 100.0
    assert scale._all_users_rank_s({"rank_seconds": 3.0, "users": 500}) == 3.0  # no sample
    assert scale._all_users_rank_s({"rank_seconds": 3.0, "users": 5, "sampled_from": None}) == 3.0
    assert scale._all_users_rank_s({}) is None
