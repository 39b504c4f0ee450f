"""Test set-up shared by every tier. OpenBLAS is preloaded before anything imports MLX."""

from __future__ import annotations

import os

import pytest

from engines import blas

blas.preload_from_env()
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Prefix cache entries spill to MLXD_HOME only in the tests that ask for it (runs stay independent).
os.environ.setdefault("MLXD_PREFIX_DISK_MB", "0")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked `optin` (large extra models) run only with MLXD_OPTIN=1."""
    if os.environ.get("MLXD_OPTIN") == "1":
        return
    skip = pytest.mark.skip(reason="opt-in: set MLXD_OPTIN=1 (downloads and runs a larger model)")
    for item in items:
        if "optin" in item.keywords:
            item.add_marker(skip)
