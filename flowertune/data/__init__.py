"""Data: loading (Hub / local files / shipped samples), partitioning, prompt formats, tokenization."""
