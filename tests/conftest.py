"""Fixtures every test file can use: the tiny model of tests/small_models.py."""

import pytest
from small_models import tiny_config as make_tiny_config
from small_models import tiny_gpt


@pytest.fixture
def tiny_config():
    return make_tiny_config()


@pytest.fixture
def tiny_model():
    """A fresh tiny GPT (seed 0, eval mode) of `tiny_config`'s configuration."""
    return tiny_gpt()
