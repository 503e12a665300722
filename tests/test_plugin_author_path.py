"""The plugin author's path, exactly as docs/plugins.md tells it: the shell commands of its
"From zero to a served model" section are read from the guide and run in order, in tmp_path,
as real processes: scaffold, install, the plugin's own tests, ``seqrec plugins``, a workspace,
train, evaluate, ``seqrec serve`` and a recommendation over HTTP with curl.

Two substitutions keep the shared venv and port 3000 untouched: ``pip install`` installs into
a private directory (``--target``, put on PYTHONPATH, where entry points are discovered), and
the server listens on a free port. A command the guide gains that this test does not know
fails the test, so the guide and the test cannot drift apart. Every ``seqrec`` command's
stderr must be free of ``...Warning`` lines (library deprecation chatter included)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from seqrec.testing import free_port

ROOT = Path(__file__).resolve().parents[1]
GUIDE = ROOT / "docs" / "plugins.md"
SECTION = "## From zero to a served model"
BIN = Path(sys.executable).parent
READY_TIMEOUT_S = 300.0
WARNING_LINE = re.compile(r"\b\w*Warning\b")


def guide_commands(text: str) -> list[list[str]]:
    """The shell commands of the guide's walkthrough, in order: each a list of words, with
    continuation lines joined, comments dropped and ``a && b`` split into two."""
    section = text.split(SECTION, 1)[1].split("\n## ", 1)[0]
    commands: list[list[str]] = []
    for block in re.findall(r"```bash\n(.*?)```", section, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            while "&&" in words:
                cut = words.index("&&")
                commands.append(words[:cut])
                words = words[cut + 1 :]
            if words:
                commands.append(words)
    return commands


def test_guide_walkthrough_is_found() -> None:
    """The parser reads what the guide says (and stops at the walkthrough's end)."""
    commands = guide_commands(GUIDE.read_text())
    firsts = [c[0] for c in commands]
    assert commands[0] == ["seqrec", "plugin", "new", "mymodel"]
    assert {"pip", "pytest", "curl", "cd"} <= set(firsts)
    assert ["seqrec", "plugins"] in commands
    assert any(c[:3] == ["seqrec", "train", "--model"] for c in commands)
    assert any(c[:2] == ["seqrec", "serve"] and c[-1] == "&" for c in commands)
    assert "twine" not in firsts  # publishing is not part of the walkthrough


@dataclass
class Shell:
    """Runs the guide's commands the way a user's shell would, in ``cwd``."""

    cwd: Path
    site: Path
    port: int = field(default_factory=free_port)
    servers: list[subprocess.Popen[bytes]] = field(default_factory=list)
    transcript: list[str] = field(default_factory=list)

    @property
    def env(self) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("SEQREC_") and k not in ("BENTOML_HOME", "PYTHONPATH")
        }
        env.update(
            PYTHONPATH=str(self.site),  # entry points are discovered from PYTHONPATH dirs
            PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
            OMP_NUM_THREADS="1",
            MKL_NUM_THREADS="1",
            BENTOML_DO_NOT_TRACK="True",
        )
        return env

    def run(self, words: list[str]) -> subprocess.CompletedProcess[str] | None:
        """Run one command of the guide; returns its result (None for ``cd`` and ``&``)."""
        self.transcript.append(f"{self.cwd}$ {shlex.join(words)}")
        background = words[-1] == "&"
        words = words[:-1] if background else words
        head = words[0]
        if head == "cd":
            self.cwd = (self.cwd / words[1]).resolve()
            assert self.cwd.is_dir(), self.transcript
            return None
        if head == "seqrec":
            cmd = [str(BIN / "seqrec"), *words[1:]]
        elif head == "pip" and words[1] == "install":
            project = re.sub(r"\[.*\]$", "", words[-1])  # extras: the deps are installed
            cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-deps"]
            cmd += ["--no-build-isolation", "--target", str(self.site), project]
        elif head == "pytest":
            cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *words[1:]]
        elif head == "curl":
            cmd = [w.replace("127.0.0.1:3000", f"127.0.0.1:{self.port}") for w in words]
        else:
            pytest.fail(f"the guide runs a command this test does not know: {words}")
        if background:
            assert words[:2] == ["seqrec", "serve"], (
                f"only the server runs in the background: {words}"
            )
            self.serve([*cmd, "--port", str(self.port)])
            return None
        start = time.monotonic()
        done = subprocess.run(
            cmd, cwd=self.cwd, env=self.env, capture_output=True, text=True, timeout=900
        )
        took = time.monotonic() - start
        self.transcript.append(f"({took:.1f} s)\n{done.stdout[-2000:]}{done.stderr[-4000:]}")
        assert done.returncode == 0, "\n".join(self.transcript)
        if head == "seqrec":
            noisy = [line for line in done.stderr.splitlines() if WARNING_LINE.search(line)]
            assert not noisy, f"`{shlex.join(words)}` warned:\n" + "\n".join(noisy)
        return done

    def serve(self, cmd: list[str]) -> None:
        """Start the server in its own session and wait until /readyz says 200."""
        log = self.cwd / "serve.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                cmd,
                cwd=self.cwd,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.servers.append(proc)
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            assert proc.poll() is None, f"seqrec serve exited:\n{log.read_text()[-5000:]}"
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"http://127.0.0.1:{self.port}/readyz", timeout=2).status_code == 200:
                    return
            assert time.monotonic() < deadline, f"not ready:\n{log.read_text()[-5000:]}"
            time.sleep(0.5)

    def stop(self) -> None:
        """Terminate each server's process group (bentoml serve starts workers)."""
        for proc in self.servers:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=20)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


@pytest.fixture
def shell(tmp_path: Path) -> Iterator[Shell]:
    sh = Shell(cwd=tmp_path, site=tmp_path / "site")
    try:
        yield sh
    finally:
        sh.stop()


@pytest.mark.slow
@pytest.mark.integration
def test_the_guide_from_zero_to_a_served_recommendation(shell: Shell) -> None:
    results: dict[str, subprocess.CompletedProcess[str]] = {}
    for words in guide_commands(GUIDE.read_text()):
        done = shell.run(words)
        if done is not None:
            results[" ".join(words[:2])] = done

    assert (shell.cwd.parent / "seqrec-mymodel" / "seqrec_mymodel" / "model.py").is_file()
    assert re.search(r"\b2 passed\b", results["pytest"].stdout), results["pytest"].stdout
    listing = results["seqrec plugins"].stdout
    assert "mymodel" in listing and "seqrec-mymodel" in listing
    assert "seqrec-mymodel:" in results["seqrec train"].stdout
    evaluation = results["seqrec evaluate"].stdout
    assert "seqrec-mymodel:" in evaluation and "test users" in evaluation
    answer = json.loads(results["curl -s"].stdout)  # the last curl: the recommendation
    assert answer["model"].startswith("seqrec-mymodel:")
    assert answer["fallback"] is False  # ranked by the plugin's model, not popularity
    assert len(answer["items"]) == 5
    assert all(item["item_id"].startswith("i") for item in answer["items"])
    print("\n".join(shell.transcript))  # shown with -rP: what each step printed, and took
