"""Run these tests on one PyTorch thread.

The products here are small, so a second thread gains little, while on shared
cores several threads can slow a test down by an order of magnitude.
"""

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
