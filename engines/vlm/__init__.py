"""Vision-language chat models through mlx-vlm (see engine.py)."""
