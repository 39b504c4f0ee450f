"""Engines: MLX models on their own threads. Knows nothing of HTTP.

Importing this package does not import MLX, so `engines.blas.preload()` can run first.
"""
