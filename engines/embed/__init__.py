"""Embeddings and reranking: encoder (BERT, XLM-RoBERTa) and decoder (last-token) embedders and
BERT cross-encoders, served by one `EmbeddingEngine` per model on its own thread."""
