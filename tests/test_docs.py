"""The docs site: generated pages match the code, the strict build passes, nothing is fetched
from elsewhere at run time."""

from __future__ import annotations

import re
from pathlib import Path

import click
import pytest
import yaml

from seqrec import docsgen

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


@pytest.mark.parametrize("page", sorted(docsgen.PAGES))
def test_generated_page_is_current(page: str) -> None:
    text = (DOCS / page).read_text()
    assert text == docsgen.PAGES[page](), f"docs/{page} is stale: run python -m seqrec.docsgen"


def test_configuration_reference_is_what_seqrec_config_prints() -> None:
    from seqrec.config import render_reference

    assert docsgen.render_config_reference() == render_reference()


def test_readme_shows_the_two_commands() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "make demo" in readme and "make test" in readme


def _nav_pages(nav: list[object]) -> list[str]:
    pages: list[str] = []
    for entry in nav:
        value = next(iter(entry.values())) if isinstance(entry, dict) else entry
        if isinstance(value, list):
            pages += _nav_pages(value)
        else:
            pages.append(str(value))
    return pages


def test_every_docs_page_is_in_the_nav_once() -> None:
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    pages = _nav_pages(config["nav"])
    assert sorted(pages) == sorted(p.name for p in DOCS.glob("*.md"))
    assert len(pages) == len(set(pages))


def test_site_uses_no_web_fonts() -> None:
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    assert config["theme"]["font"] is False
    assert not config.get("extra_javascript") and not config.get("extra_css")


EXTERNAL = re.compile(r"""<(?:script|link|img|iframe)\b[^>]*\b(?:src|href)=["'](?:https?:)?//""")


def test_site_builds_strict_with_only_local_assets(tmp_path: Path) -> None:
    site = tmp_path / "site"
    result = docsgen.build_site(site)
    assert result.returncode == 0, result.stderr[-4000:]
    for page in ("index.html", "quickstart/index.html", "cli/index.html", "hooks/index.html"):
        assert (site / page).is_file(), page
    assert (site / "img" / "concepts.svg").is_file()
    external = [
        f"{html.relative_to(site)}: {m.group(0)}"
        for html in site.rglob("*.html")
        for m in EXTERNAL.finditer(html.read_text())
    ]
    assert not external, external


def test_cli_reference_lists_nested_commands_options_and_help() -> None:
    @click.group()
    def root() -> None:
        """Root."""

    @root.group()
    def outer() -> None:
        """Outer group."""

    @outer.command()
    @click.argument("path")
    @click.option("--size", type=int, default=3, show_default=True, help="How many | at most.")
    def inner(path: str, size: int) -> None:
        """Do the inner thing with <PATH>.

        Second paragraph."""

    text = docsgen.render_cli_reference(root)
    assert "## `seqrec outer`" in text and "## `seqrec outer inner`" in text
    assert "seqrec outer inner [OPTIONS] PATH" in text
    assert "Do the inner thing with &lt;PATH&gt;." in text and "Second paragraph." in text
    assert "| `--size INTEGER` | How many \\| at most.  [default: 3] |" in text
    assert "Subcommands: `seqrec outer inner`." in text


def test_cli_reference_shows_commands_a_plugin_adds() -> None:
    from seqrec.hookspecs import hookimpl
    from seqrec.plugins import new_plugin_manager

    class Greeter:
        @hookimpl
        def register_commands(self, cli: click.Group) -> None:
            @cli.command()
            @click.option("--name", default="world", help="Who to greet.")
            def hello(name: str) -> None:
                """Say hello."""

    @click.group()
    def root() -> None:
        """Root."""

    pm = new_plugin_manager(load_entrypoints=False)
    pm.register(Greeter(), name="greeter")
    pm.call_each("register_commands", cli=root)
    assert "hello" in root.commands
    text = docsgen.render_cli_reference(root)
    assert "## `seqrec hello`" in text and "Who to greet." in text


def test_write_pages_rewrites_only_stale_pages(tmp_path: Path) -> None:
    for name, render in docsgen.PAGES.items():
        (tmp_path / name).write_text(render())
    (tmp_path / "hooks.md").write_text("# stale\n")
    assert docsgen.write_pages(tmp_path) == [tmp_path / "hooks.md"]
    assert (tmp_path / "hooks.md").read_text() == docsgen.render_hook_reference()
    assert docsgen.write_pages(tmp_path) == []


def test_docsgen_help_prints_usage_and_writes_nothing(tmp_path: Path) -> None:
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-m", "seqrec.docsgen", "--help"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage:") and "DOCS_DIR" in proc.stdout
    assert list(tmp_path.iterdir()) == []


def test_docsgen_writes_pages_into_the_folder_it_is_given(tmp_path: Path) -> None:
    assert docsgen.main([str(tmp_path)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(docsgen.PAGES)


def test_docsgen_with_a_missing_folder_is_a_usage_error_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        docsgen.main([str(tmp_path / "nowhere")])
    assert exit_.value.code == 2
    assert "nowhere" in capsys.readouterr().err
