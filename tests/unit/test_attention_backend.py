"""mlxd defaults MLX's CUDA attention to the shape-generic kernels and leaves a user's choice."""

from __future__ import annotations

import os

import pytest

from engines import attention_backend
from engines.attention_backend import CUDNN_ATTENTION_VARIABLE


def test_cudnn_attention_is_off_unless_the_user_chose(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(CUDNN_ATTENTION_VARIABLE, raising=False)
    assert attention_backend.prefer_shape_generic_attention() == "0"
    assert os.environ[CUDNN_ATTENTION_VARIABLE] == "0"
    monkeypatch.setenv(CUDNN_ATTENTION_VARIABLE, "1")
    assert attention_backend.prefer_shape_generic_attention() == "1"
    assert os.environ[CUDNN_ATTENTION_VARIABLE] == "1"
