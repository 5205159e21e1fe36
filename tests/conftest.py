import pytest
import torch

from tests.support.browser import browser, page  # noqa: F401  (shared by every browser test module)


@pytest.fixture(scope="session")
def builtin_head():
    from agora_core.heads.builtin import builtin_head_model

    return builtin_head_model()


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="module")
def one_thread():
    """Small numeric problems run fastest on one thread; on a shared, oversubscribed CPU two OpenMP
    threads can make them 10-100x slower. Results do not depend on it."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
