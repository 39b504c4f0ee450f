"""Test set-up shared by every tier. OpenBLAS is preloaded before anything imports MLX."""

from __future__ import annotations

import os

from engines import blas

blas.preload_from_env()
os.environ.setdefault("HF_HUB_OFFLINE", "1")
