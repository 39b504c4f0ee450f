"""Placing a lazily loaded mlx-lm model on the ranks of a group, with mlx-lm's own code.

Tensor parallel: `model.shard(group)` (mlx-lm's families that define it) splits every
attention and MLP projection; each rank holds 1/size of them and the outputs are all-reduced,
so every rank ends with the same hidden states and logits. Pipeline: `model.model.pipeline(group)`
(`PipelineMixin`) gives each rank a run of layers; hidden states go rank to rank and the last
stage's are all-gathered. Either way, every rank computes the same logits.

A family that cannot be placed the asked way is refused in one line naming it (before any weight
is read): no `shard`, no pipeline, or head counts the group size does not divide (mlx-lm does not
check that, and would build wrong shapes).
"""

from __future__ import annotations

from typing import Any


def family(model: Any) -> str:
    return str(type(model).__module__).rpartition(".")[2]


def place(model: Any, group: Any, pipeline: bool) -> None:
    """Shard `model` over `group` in place (a group of one leaves it whole)."""
    size = int(group.size())
    if pipeline:
        inner: Any = getattr(model, "model", None)
        if not hasattr(inner, "pipeline"):
            raise ValueError(
                f"model family {family(model)!r} has no pipeline support in mlx-lm "
                "(PipelineMixin); serve it tensor parallel (without --pipeline)"
            )
        layers = len(inner.layers)
        if layers < size:
            raise ValueError(f"{layers} layers cannot be split over {size} pipeline stages")
        inner.pipeline(group)
        return
    if not hasattr(model, "shard"):
        raise ValueError(
            f"model family {family(model)!r} cannot be sharded tensor parallel by mlx-lm"
            + (" (try --pipeline)" if hasattr(getattr(model, "model", None), "pipeline") else "")
        )
    for heads in _head_counts(model):
        if heads % size:
            raise ValueError(
                f"model family {family(model)!r}: {heads} attention heads do not divide over "
                f"{size} ranks"
            )
    if size > 1:
        model.shard(group)


def _head_counts(model: Any) -> set[int]:
    """The query and key/value head counts the model's configuration declares."""
    args = getattr(model, "args", None)
    names = ("num_attention_heads", "num_key_value_heads", "n_heads", "n_kv_heads")
    counts = {getattr(args, name, None) for name in names}
    return {int(c) for c in counts if isinstance(c, int) and c > 0}
