"""ServerApp: translate Flower's context into a resolved config and run the round loop."""

from __future__ import annotations

import logging

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from flowertune.config import resolve
from flowertune.federation.rundir import RunDir
from flowertune.federation.server_loop import run_federation
from flowertune.logs import setup_logging

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Resolve the config, create (or reopen, to resume) the run directory, run the federation."""
    setup_logging()
    cfg = resolve(dict(context.run_config))
    run_dir = RunDir.open(cfg) if cfg.run.resume else RunDir.create(cfg)
    logging.getLogger(__name__).info("flowertune run: %s preset %s, %d rounds -> %s",
                                     "resuming" if cfg.run.resume else "new run,", cfg.run.preset,
                                     cfg.run.num_server_rounds, run_dir.path)
    try:
        run_federation(grid, cfg, run_dir)
    finally:  # finished or stopped: the report says which, with every round recorded so far
        from flowertune.report import write_report_quietly  # matplotlib: only once the rounds are over

        write_report_quietly(run_dir.path)
