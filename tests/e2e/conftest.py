"""The server tests' shared fixtures: the Python API on the tiny run's checkpoint, and
`captioner serve` on it with a 1 MiB upload limit (each module starts its own)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.serve import LIMIT_MB, Served, running_server

from captioner.model.inference import Captioner


@pytest.fixture(scope="module")
def api(best: Path) -> Captioner:
    return Captioner.from_checkpoint(best, device="cpu")


@pytest.fixture(scope="module")
def server(best: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    with running_server(best, tmp_path_factory.mktemp("serve"), "--max-upload-mb", str(LIMIT_MB)) as served:
        yield served
