"""Model sources, loading and the adapter (the only thing that goes on the wire)."""
