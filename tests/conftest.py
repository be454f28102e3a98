"""Shared pytest fixtures."""

import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """Run a module single-threaded: its scenes are tiny, and on a busy 2-core machine torch's worker threads
    only add synchronisation (~3× the time)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
