"""Model weights: the local model store and importers that convert other formats into it."""
