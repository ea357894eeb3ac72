"""Shared fixtures: the real Prophesee recordings in ../shared (skipped cleanly where absent)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # must precede the first torch import
os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_VERBOSE", "False")
os.environ.setdefault("YOLO_AUTOINSTALL", "False")

REPO = Path(__file__).resolve().parents[1]
REAL_FIXTURES = Path(os.environ.get("SPQUANT_REAL_FIXTURES", REPO.parent / "shared" / "fixtures" / "real"))


@pytest.fixture
def real_file():
    """Return a function mapping a fixture name to its path, skipping the test when the file is absent."""

    def get(name: str) -> Path:
        path = REAL_FIXTURES / name
        if not path.is_file():
            pytest.skip(f"real fixture {name} not found under {REAL_FIXTURES}")
        return path

    return get
