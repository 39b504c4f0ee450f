"""Reading MLX arrays back to the host as Python values, typed for the host-side code of every
engine. Each call synchronises with the device: the engine thread calls these only where it
needs the values (tokens to detokenize, scores to compare)."""

from __future__ import annotations

from typing import Any, cast

import mlx.core as mx


def host_list(array: mx.array) -> list[Any]:
    """An MLX array's values as (nested) Python lists."""
    return cast(list[Any], array.tolist())


def host_scalar(array: mx.array) -> float:
    return float(cast(float, array.item()))
