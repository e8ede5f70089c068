"""Where flowertune keeps its own state on this machine: ``$FLOWERTUNE_HOME``, else ``~/.flowertune``.

Under it: ``flwr/`` (the managed local SuperLink's FLWR_HOME), ``app/`` (the Flower app generated for a wheel
install), ``workers/`` and ``worker.key`` (deployment workers), ``client-state/`` (delta codecs' wire state for
resume).
"""

from __future__ import annotations

import os
from pathlib import Path

from flowertune.durable import private_dir


def flowertune_home() -> Path:
    """``$FLOWERTUNE_HOME`` or ``~/.flowertune``, absolute; created private (0700) when missing, and
    ``~/.flowertune`` kept private (it holds the worker key and every run's client state)."""
    given = os.environ.get("FLOWERTUNE_HOME")
    home = Path(given or Path.home() / ".flowertune").absolute()
    if not home.exists() or not given:
        try:
            private_dir(home)
        except OSError:
            pass  # a read-only home: whoever writes under it reports the error with its path
    return home
