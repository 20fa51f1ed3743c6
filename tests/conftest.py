import pytest
import torch

from lora_teach.model import GPT, GPTConfig


@pytest.fixture
def tiny_config():
    return GPTConfig(n_layer=2, n_head=2, n_embd=16, block_size=96)


@pytest.fixture
def tiny_model(tiny_config):
    torch.manual_seed(0)
    return GPT(tiny_config).eval()
