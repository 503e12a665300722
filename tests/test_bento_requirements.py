"""A Bento's pinned FAISS requirement ([serve] ann = true) names the installed distribution that
provides the imported ``faiss`` module, whichever it is (faiss-cpu, faiss-gpu, ...); a ``faiss``
module that no installed distribution provides is a clear error saying how to install one.

The other FAISS installs are real ones on disk: a ``faiss`` package, with or without a
``dist-info`` directory, put first on ``sys.path``."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from seqrec.bento import _requirements
from seqrec.config import Workspace
from seqrec.errors import SeqrecError
from seqrec.testing import make_workspace

pytest.importorskip("faiss", reason="the ann extra: pip install 'seqrec[ann]'")


def _faiss_install(site: Path, dist: str | None) -> None:
    """A ``faiss`` package in ``site``; with ``dist`` (``name==version``) its dist-info too."""
    (site / "faiss").mkdir(parents=True)
    (site / "faiss" / "__init__.py").write_text("IndexFlatIP = None\n")
    if dist is None:
        return
    name, version = dist.split("==")
    info = site / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    (info / "top_level.txt").write_text("faiss\n")
    (info / "RECORD").write_text(f"faiss/__init__.py,,\n{info.name}/METADATA,,\n")


@pytest.fixture
def faiss_site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A site directory searched first; ``faiss`` is imported afresh from the path."""
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.delitem(sys.modules, "faiss", raising=False)
    return site


def _ann_ws(root: Path) -> Workspace:
    return make_workspace(root, "[serve]\nann = true\n")


def test_the_faiss_requirement_names_the_distribution_that_provides_faiss(
    faiss_site: Path, tmp_path: Path
) -> None:
    _faiss_install(faiss_site, "faiss-gpu==1.7.2")
    reqs = _requirements(_ann_ws(tmp_path / "ws"), [])
    assert "faiss-gpu==1.7.2" in reqs
    assert not any(r.startswith("faiss-cpu") for r in reqs)


def test_a_faiss_module_from_no_installed_distribution_is_an_error_with_the_install_hint(
    faiss_site: Path, tmp_path: Path
) -> None:
    _faiss_install(faiss_site, None)
    with pytest.raises(SeqrecError, match=r"no installed distribution.*faiss") as err:
        _requirements(_ann_ws(tmp_path / "ws"), [])
    assert "pip install 'seqrec[ann]'" in str(err.value)


def test_the_installed_faiss_cpu_is_pinned_at_its_version(tmp_path: Path) -> None:
    from importlib import metadata

    if "faiss-cpu" not in metadata.packages_distributions().get("faiss", []):
        pytest.skip("FAISS here is not faiss-cpu")
    reqs = _requirements(_ann_ws(tmp_path / "ws"), [])
    assert f"faiss-cpu=={metadata.version('faiss-cpu')}" in reqs
