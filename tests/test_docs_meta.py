"""Meta-tests: the docs cover the code (hooks, commands, config keys, error messages) and the
shell blocks of README.md and docs/quickstart.md run as written."""

from __future__ import annotations

import ast
import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest

from seqrec import docsgen

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
GENERATED = set(docsgen.PAGES)


def _hand_written() -> str:
    """README.md and every docs page that is not generated from the code."""
    pages = [p for p in sorted(DOCS.glob("*.md")) if p.name not in GENERATED]
    return "\n".join(p.read_text() for p in [ROOT / "README.md", *pages])


# -- hooks -----------------------------------------------------------------------------------


def _test_sources() -> Iterator[tuple[Path, str]]:
    """Every test module of the core and the plugins, except this one."""
    files = [*ROOT.glob("tests/**/*.py"), *ROOT.glob("plugins/*/tests/**/*.py")]
    for path in sorted(files):
        if path.resolve() != Path(__file__).resolve():
            yield path, path.read_text()


@pytest.mark.parametrize("name", [name for name, _ in docsgen.hookspecs()])
def test_hookspec_is_in_the_hook_reference(name: str) -> None:
    import inspect

    fn = dict(docsgen.hookspecs())[name]
    reference = (DOCS / "hooks.md").read_text()
    assert f"## `{name}`" in reference
    assert f"def {name}{str(inspect.signature(fn)).replace(chr(39), '')}" in reference
    first_line = inspect.cleandoc(fn.__doc__ or "").splitlines()[0]
    assert first_line and docsgen._md(first_line) in reference


@pytest.mark.parametrize("name", [name for name, _ in docsgen.hookspecs()])
def test_hookspec_is_exercised_by_a_test(name: str) -> None:
    """A test implements the hook or calls it (not counting this file)."""
    used = re.compile(rf"def {name}\(|hook\.{name}\(|call_each\(\s*['\"]{name}['\"]")
    users = [str(p.relative_to(ROOT)) for p, text in _test_sources() if used.search(text)]
    assert users, f"no test implements or calls the hook {name}"


# -- commands and configuration ---------------------------------------------------------------


def _commands() -> list[str]:
    from seqrec.cli import build_cli

    return [" ".join(path) for path, _ in docsgen.walk_commands(build_cli())]


def test_every_command_is_in_the_cli_reference_and_a_guide() -> None:
    reference = (DOCS / "cli.md").read_text()
    guides = _hand_written()
    commands = _commands()
    assert "seqrec train" in commands and "seqrec features materialize" in commands
    assert not [c for c in commands if f"## `{c}`" not in reference], "run python -m seqrec.docsgen"
    unexplained = [c for c in commands if not re.search(rf"{re.escape(c)}(?![\w-])", guides)]
    assert not unexplained, f"commands no guide or README mentions: {unexplained}"


def _config_keys() -> list[str]:
    from pydantic import BaseModel

    from seqrec.config import Config

    keys = []
    for section, info in Config.model_fields.items():
        ann = info.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            keys += [f"{section}.{key}" for key in ann.model_fields]
        else:
            keys.append(section)
    return keys


def test_every_config_key_is_in_the_configuration_reference() -> None:
    reference = (DOCS / "configuration.md").read_text()
    keys = _config_keys()
    assert "train.epochs" in keys and "features.max_len" in keys
    assert "hyperparams" in keys  # a table of tables: `hyperparams.<model>.<key>`
    assert not [k for k in keys if not re.search(rf"^\| `{re.escape(k)}[`.]", reference, re.M)]


# -- troubleshooting ---------------------------------------------------------------------------


@cache
def _message_patterns() -> list[re.Pattern[str]]:
    """Regexes of the string literals and f-strings in seqrec and its plugins (``{...}``
    parts match anything) with at least 6 literal characters: what a message can say."""
    files = [*ROOT.glob("seqrec/**/*.py"), *ROOT.glob("plugins/*/seqrec_*/**/*.py")]
    patterns = []
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.JoinedStr):
                parts = [
                    re.escape(v.value) if isinstance(v, ast.Constant) else ".*?"
                    for v in node.values
                ]
                literal = sum(len(v.value) for v in node.values if isinstance(v, ast.Constant))
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                parts, literal = [re.escape(node.value)], len(node.value)
            else:
                continue
            if literal >= 6 and "\n" not in "".join(parts):
                # a message may follow a "where: " prefix (a file, a URL, a workspace)
                patterns.append(re.compile(r"(?:.*: )?" + "".join(parts)))
    return patterns


def _quoted_messages() -> list[str]:
    """The ``error:`` and ``hint:`` lines of the troubleshooting page's examples."""
    text = (DOCS / "troubleshooting.md").read_text()
    catalogue = text[text.index("\n## ") :]  # the intro shows the format with placeholders
    lines = []
    for block in re.findall(r"^```text\n(.*?)^```", catalogue, re.M | re.S):
        for line in block.splitlines():
            m = re.fullmatch(r"\s*(?:error|hint): (.+)", line)
            if m:
                lines.append(m.group(1))
    return lines


def test_troubleshooting_quotes_messages_the_code_can_print() -> None:
    messages = _quoted_messages()
    assert len(messages) >= 30
    unknown = [m for m in messages if not any(p.fullmatch(m) for p in _message_patterns())]
    assert not unknown, f"messages no code prints (reworded or removed?): {unknown}"


def test_troubleshooting_check_rejects_a_made_up_message() -> None:
    made_up = "the flux capacitor is out of plutonium"
    assert not any(p.fullmatch(made_up) for p in _message_patterns())
    assert any(p.fullmatch("/srv/shop: no such file") for p in _message_patterns())


# -- shell blocks ------------------------------------------------------------------------------

SHELL_DOCS = ["README.md", "docs/quickstart.md"]
FENCE = re.compile(r"^```(bash|sh|console)\s*$")
SKIP = re.compile(r"^<!--\s*docs-test:\s*skip\s*\((.+)\)\s*-->$")
#: the port `seqrec serve` uses by default (serve.port), which the blocks query
SERVE_PORT = 3000


@dataclass(frozen=True)
class ShellBlock:
    doc: str
    line: int  # of the opening fence, 1-based
    code: str
    skip: str | None  # the reason of a `docs-test: skip (...)` marker right before it

    @property
    def where(self) -> str:
        return f"{self.doc}:{self.line}"


def _console_commands(body: list[str]) -> list[str]:
    """The commands of a console transcript: ``$ `` lines and their continuations."""
    out: list[str] = []
    for line in body:
        if line.startswith("$ "):
            out.append(line[2:])
        elif out and out[-1].endswith("\\"):
            out.append(line)
    return out


def shell_blocks(doc: str) -> list[ShellBlock]:
    """The bash/sh/console blocks of ``doc`` (relative to the checkout), in order."""
    lines = (ROOT / doc).read_text().splitlines()
    blocks, i = [], 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        end = next(j for j in range(i + 1, len(lines)) if lines[j].strip() == "```")
        body = lines[i + 1 : end]
        code = "\n".join(_console_commands(body) if m.group(1) == "console" else body)
        before = next((ln.strip() for ln in reversed(lines[:i]) if ln.strip()), "")
        skip = SKIP.match(before)
        blocks.append(ShellBlock(doc, i + 1, code + "\n", skip.group(1) if skip else None))
        i = end + 1
    return blocks


def test_skip_markers_sit_right_before_shell_blocks() -> None:
    for doc in SHELL_DOCS:
        markers = [
            n + 1
            for n, ln in enumerate((ROOT / doc).read_text().splitlines())
            if "docs-test:" in ln
        ]
        skipped = [b for b in shell_blocks(doc) if b.skip]
        assert len(markers) == len(skipped), f"{doc}: a docs-test marker not before a shell block"
        assert all(b.skip and b.skip.strip() for b in skipped)


def test_shell_block_parser_reads_fences_markers_and_console(tmp_path: Path) -> None:
    doc = tmp_path / "x.md"
    doc.write_text(
        "# x\n\n<!-- docs-test: skip (needs a GPU) -->\n```bash\nnvidia-smi\n```\n\n"
        "```console\n$ echo a \\\n  b\na b\n```\n\n```python\nprint(1)\n```\n"
    )
    blocks = shell_blocks(str(doc))  # an absolute path wins over ROOT
    assert [(b.line, b.skip) for b in blocks] == [(4, "needs a GPU"), (8, None)]
    assert blocks[1].code == "echo a \\\n  b\n"


def _skipped_blocks() -> list[ShellBlock]:
    return [b for doc in SHELL_DOCS for b in shell_blocks(doc) if b.skip]


@pytest.mark.parametrize("block", _skipped_blocks(), ids=lambda b: b.where)
def test_shell_block_marked_skip(block: ShellBlock) -> None:
    """One skipped test per marked block, so the run's summary counts them with reasons."""
    pytest.skip(f"{block.where}: docs-test: skip ({block.skip})")


def _port_is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _script(blocks: list[ShellBlock], workdir: Path) -> Path:
    """One bash script that sources every block in order, in one shell (so `cd` and
    background jobs carry over, as in a terminal), announcing each block on stderr."""
    lines = ["set -eo pipefail", "trap 'kill $(jobs -p) 2>/dev/null || true' EXIT"]
    for n, block in enumerate(blocks, 1):
        path = workdir / f".block-{n}.sh"
        path.write_text(block.code)
        lines += [
            f"echo '>>> block {n}/{len(blocks)}: {block.where}' >&2",
            "SECONDS=0",
            f"source {path}",
            f'echo ">>> block {n} took $SECONDS s" >&2',
        ]
    lines.append("echo '>>> every block ran' >&2")
    script = workdir / ".blocks.sh"
    script.write_text("\n".join(lines) + "\n")
    return script


def _env() -> dict[str, str]:
    """The user's environment as the docs assume it: the venv's bin first on PATH, no
    seqrec or BentoML overrides (the tests' own BENTOML_HOME included), plain output."""
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("SEQREC_", "BENTOML_", "PYTEST"))
    }
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", NO_COLOR="1", TERM="dumb")
    env.update(COLUMNS="100", BENTOML_DO_NOT_TRACK="True")
    return env


@pytest.mark.slow
@pytest.mark.parametrize("doc", SHELL_DOCS)
def test_shell_blocks_run_in_order(doc: str, tmp_path: Path) -> None:
    blocks = [b for b in shell_blocks(doc) if not b.skip]
    assert blocks, f"{doc} has no shell block to run"
    if any("seqrec serve" in b.code for b in blocks):
        assert _port_is_free(SERVE_PORT), f"port {SERVE_PORT} is busy: {doc} serves on it"
    workdir = tmp_path / "workspace"
    workdir.mkdir()
    proc = subprocess.Popen(
        ["bash", str(_script(blocks, workdir))],
        cwd=workdir,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group: a server left behind dies with it
    )
    try:
        output, _ = proc.communicate(timeout=1800)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        pytest.fail(f"{doc}: shell blocks still running after 30 min:\n{output[-6000:]}")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
    failed = re.findall(r">>> block \d+/\d+: (\S+)", output)
    assert proc.returncode == 0, (
        f"{doc}: the block at {failed[-1] if failed else '?'} failed "
        f"(exit {proc.returncode}):\n{output[-6000:]}"
    )
    assert ">>> every block ran" in output
    print(f"{doc}:", ", ".join(re.findall(r">>> (block \d+ took \d+ s)", output)))
