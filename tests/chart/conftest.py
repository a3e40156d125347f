"""Fixtures of the chart tests."""

from __future__ import annotations

import pytest
from chartkit import Obj, render


@pytest.fixture(scope="module")
def defaults() -> list[Obj]:
    return render()
