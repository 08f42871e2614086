"""Shared pytest fixtures."""

import pytest


@pytest.fixture(params=["2pc", "3pc"])
def suite(request: pytest.FixtureRequest) -> str:
    """Every protocol suite: tests that take ``suite`` run once per suite."""
    return request.param
