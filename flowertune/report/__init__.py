"""Reports of run directories: methodology, per-round table, plots and the leaderboard table."""

from flowertune.report.document import write_report, write_report_quietly

__all__ = ["write_report", "write_report_quietly"]
