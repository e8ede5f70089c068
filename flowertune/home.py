"""Where flowertune keeps its own state on this machine: ``$FLOWERTUNE_HOME``, else ``~/.flowertune``.

Under it: ``flwr/`` (the managed local SuperLink's FLWR_HOME), ``app/`` (the Flower app generated for a wheel
install), ``workers/`` and ``worker.key`` (deployment workers), ``client-state/`` (delta codecs' wire state for
resume).
"""

from __future__ import annotations

import os
from pathlib import Path


def flowertune_home() -> Path:
    """``$FLOWERTUNE_HOME`` or ``~/.flowertune``, absolute."""
    return Path(os.environ.get("FLOWERTUNE_HOME", Path.home() / ".flowertune")).absolute()
