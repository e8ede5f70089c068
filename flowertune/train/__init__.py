"""Local training: batching, the loss, the per-round loop and the learning-rate schedule."""
