"""Shared fixtures: a private cache and one real tiny training run. The tests are grouped by kind:
unit/ (modules in-process), cli/ (`captioner ...` command lines), e2e/ (whole flows: train then
caption, resume after a kill, Ctrl-C, DDP, the server); helpers/ holds what they share."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from helpers.cli import TINY, run_cli_process


@pytest.fixture(scope="session", autouse=True)
def private_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tests never read or write the user's cache."""
    cache = tmp_path_factory.mktemp("cache")
    os.environ["CAPTIONER_CACHE"] = str(cache)
    return cache


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory: pytest.TempPathFactory, private_cache: Path) -> Path:
    """One `captioner train` on the tiny set (fine-tuned VGG11-BN + LSTM): returns its workdir."""
    workdir = tmp_path_factory.mktemp("work")
    result = run_cli_process("train", *TINY, cwd=workdir)  # as a user runs it
    assert result.returncode == 0, result.stderr[-3000:]
    return workdir


@pytest.fixture(scope="session")
def best(trained_run: Path) -> Path:
    """The tiny training run's best checkpoint."""
    return trained_run / "runs" / "shapes" / "checkpoints" / "best.ckpt"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Whatever needs the tiny training run is slow (the run itself takes ~15 s): the fast loop,
    `pytest -m "not slow"`, leaves it out."""
    for item in items:
        if "trained_run" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)
