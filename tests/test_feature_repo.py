"""The Feast repo at the top of the source tree: `feast apply` works on it and on the copy
`seqrec init` makes, seqrec renders workspaces' feature_store.yaml from it, the wheel ships it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from seqrec.cli import build_cli
from seqrec.config import Config, Workspace
from seqrec.features.repo import TEMPLATES, render_feature_store_yaml, template_dir

ROOT = Path(__file__).resolve().parents[1]
REPO = ROOT / "feature_repo"
SHIPPED = (
    "__init__.py",
    "definitions.py",
    ".feastignore",
    "feature_store.yaml",
    "feature_store.postgres-redis.yaml",
    "feature_store.spark-redis.yaml",
)
PIP_WHEEL = (sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q")
URL_ENV = ("SEQREC_PROJECT", "SEQREC_EVENTS_URL", "SEQREC_PG_URL", "SEQREC_REDIS_URL")


def _feast(repo: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The real feast CLI of this environment, run in ``repo`` as Feast documents it."""
    env = {k: v for k, v in os.environ.items() if k not in URL_ENV}
    env["FEAST_USAGE"] = "False"
    feast = Path(sys.executable).parent / "feast"
    return subprocess.run(
        [str(feast), *args], cwd=repo, env=env, capture_output=True, text=True, timeout=600
    )


def _registered_views(repo: Path) -> set[str]:
    from feast import FeatureStore

    return {v.name for v in FeatureStore(repo_path=str(repo)).list_feature_views()}


@pytest.fixture
def _no_url_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in URL_ENV:
        monkeypatch.delenv(name, raising=False)


def test_the_source_tree_has_one_feature_repo_and_seqrec_uses_it() -> None:
    assert not (ROOT / "seqrec" / "feature_repo").exists()
    assert Path(str(template_dir())).resolve() == REPO
    assert sorted(p.name for p in REPO.iterdir() if p.name != "__pycache__") == sorted(SHIPPED)


@pytest.mark.usefixtures("_no_url_env")
@pytest.mark.parametrize("profile", sorted(TEMPLATES))
def test_a_default_workspace_renders_its_profile_template_unchanged_but_absolute_paths(
    profile: str, tmp_path: Path
) -> None:
    ws = Workspace(tmp_path, Config(profile=profile))  # type: ignore[arg-type]
    template = yaml.safe_load((REPO / TEMPLATES[profile]).read_text())
    rendered = yaml.safe_load(render_feature_store_yaml(ws))
    if profile == "embedded":  # the template's ../data paths, resolved from the workspace
        template["registry"] = str(tmp_path / "data" / "registry.db")
        template["online_store"]["path"] = str(tmp_path / "data" / "online.db")
    assert rendered == template


@pytest.mark.usefixtures("_no_url_env")
def test_feast_apply_in_a_workspace_made_by_seqrec_init(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    result = CliRunner().invoke(build_cli(), ["init", str(ws)])
    assert result.exit_code == 0, result.output
    repo = ws / "feature_repo"
    for name in ("definitions.py", ".feastignore"):
        assert (repo / name).read_text() == (REPO / name).read_text()
    done = _feast(repo, "apply")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "user_sequence" in _registered_views(repo)
    assert (ws / "data" / "registry.db").is_file()


def test_feast_apply_in_the_source_tree_repo_uses_seqrec_defaults(tmp_path: Path) -> None:
    checkout = tmp_path / "checkout"  # a copy: applying writes ../data beside the repo
    shutil.copytree(REPO, checkout / "feature_repo", ignore=shutil.ignore_patterns("__pycache__"))
    done = _feast(checkout / "feature_repo", "apply")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "user_sequence" in _registered_views(checkout / "feature_repo")
    assert (checkout / "data" / "registry.db").is_file()


def test_the_wheel_ships_the_feature_repo_as_package_data(tmp_path: Path) -> None:
    src = tmp_path / "src"  # build from a copy: other builds may use the tree's build/ dir
    src.mkdir()
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    for name in ("seqrec", "feature_repo"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    built = subprocess.run(
        [*PIP_WHEEL, "-w", str(tmp_path / "w"), str(src)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    (wheel,) = (tmp_path / "w").glob("seqrec-*.whl")
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as zf:
        for name in SHIPPED:
            assert zf.read(f"seqrec/feature_repo/{name}") == (REPO / name).read_bytes(), name
        zf.extractall(site)
    # installed from the wheel, seqrec finds its repo in the package
    found = subprocess.run(
        [
            sys.executable,
            "-c",
            "from seqrec.features.repo import template_dir; print(template_dir())",
        ],
        env={**os.environ, "PYTHONPATH": str(site)},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert found.returncode == 0, found.stderr
    assert Path(found.stdout.strip()) == site / "seqrec" / "feature_repo"
