"""Shared pytest fixtures."""

import pytest

from mpc_core.allocator import tune_allocator

tune_allocator()  # the in-process parties allocate large temporaries (mpc_core/allocator.py)


@pytest.fixture(params=["2pc", "3pc"])
def suite(request: pytest.FixtureRequest) -> str:
    """Every protocol suite: tests that take ``suite`` run once per suite."""
    return request.param
