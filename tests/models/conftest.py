"""Fixtures the model tests share."""

import keras
import pytest


@pytest.fixture
def mixed_bfloat16():
    """Keras' global dtype policy set to ``mixed_bfloat16`` for the test, restored after."""
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)
