import pytest
import torch


@pytest.fixture(scope="session")
def builtin_head():
    from agora_core.builtin_head import builtin_head_model

    return builtin_head_model()


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield
