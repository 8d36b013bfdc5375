"""Helpers for the data/model-layer tests: the real data root (skip only outside CI), offline hub."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

SHARED_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"


def data_root_or_skip() -> Path:
    """The shared data folder ($BALANCEDNESS_DATA or ../shared/data); skip when absent, fail under CI."""
    root = Path(os.environ.get("BALANCEDNESS_DATA") or SHARED_DATA).resolve()
    if not (root / "lm-bff").is_dir():
        message = f"shared data not found at {root} (set BALANCEDNESS_DATA)"
        if os.environ.get("CI"):
            pytest.fail(message + "; CI must have it")
        pytest.skip(message)
    return root
