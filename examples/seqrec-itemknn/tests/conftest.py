"""Fixtures for the itemknn plugin's tests: one thread, a private model store, a fresh
plugin manager per test."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator

import pytest
import torch

from seqrec.plugins import reset_plugin_manager

torch.set_num_threads(1)  # tiny models: one thread is faster than several fighting
# BentoML reads BENTOML_HOME once per process: keep every model these tests store apart
os.environ["BENTOML_HOME"] = tempfile.mkdtemp(prefix="seqrec-itemknn-tests-")


@pytest.fixture(autouse=True)
def _fresh_plugins() -> Iterator[None]:
    reset_plugin_manager()
    yield
    reset_plugin_manager()
