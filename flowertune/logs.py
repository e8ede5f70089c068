"""Text logging for flowertune's own modules (numbers go to metrics.jsonl)."""

from __future__ import annotations

import logging
import os
import sys

_CONFIGURED = False


def setup_logging(level: str | None = None) -> None:
    """Send ``flowertune.*`` INFO logs to stderr once per process (``FLOWERTUNE_LOG_LEVEL`` overrides)."""
    global _CONFIGURED
    if _CONFIGURED:
        return
    logger = logging.getLogger("flowertune")
    logger.setLevel(level or os.environ.get("FLOWERTUNE_LOG_LEVEL", "INFO"))
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s flowertune %(levelname)s: %(message)s", "%H:%M:%S"))
    logger.addHandler(handler)
    logger.propagate = False
    _CONFIGURED = True
