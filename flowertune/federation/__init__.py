"""The federation: client runtime state, strategies, the server's round loop and the run directory."""
