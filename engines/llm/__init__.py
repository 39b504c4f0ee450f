"""The LLM engine: mlx-lm models served by one engine thread each."""
