"""Shared pytest fixtures."""

import pytest

from sheap_lite.threads import single_thread


@pytest.fixture(scope="module")
def one_thread():
    """Run a module single-threaded: its scenes are tiny, and on a busy 2-core machine torch's worker threads
    only add synchronisation (~3× the time)."""
    with single_thread():
        yield
