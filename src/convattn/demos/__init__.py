"""Runnable demos of the attention chapter: attention pooling and a seq2seq Transformer."""
