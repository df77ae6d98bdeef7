"""Fixtures shared by the test modules."""
import pytest
import torch


@pytest.fixture
def one_thread():
    "One torch thread: tiny tensors gain nothing from threads, and float results then do not depend on the split."
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
