"""One model across several processes or machines over `mx.distributed` (engines/llm/distributed.py
is the engine; this package forms the group and carries the step plans)."""
