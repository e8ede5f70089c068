"""Progress while a round runs: which clients are done, elapsed time, ETA from the rounds so far, bytes.

:func:`send_and_receive` is Flower's push-then-pull loop (``Grid.push_messages`` / ``Grid.pull_messages``)
with a callback after every poll, so the server can say something between a round's start and its end.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from flwr.app import Message
from flwr.serverapp import Grid

from flowertune.eval.leaderboard import MB
from flowertune.federation.records import message_bytes

log = logging.getLogger(__name__)

POLL_S = 1.0


def send_and_receive(grid: Grid, messages: Iterable[Message], timeout: float,
                     on_poll: Callable[[list[Message], int], None] | None = None,
                     poll_s: float = POLL_S) -> list[Message]:
    """Push ``messages`` and pull their replies until all came back or ``timeout`` seconds passed.

    ``on_poll(replies so far, sent)`` is called after every pull. Replies come back in arrival order, as
    with ``Grid.send_and_receive``.
    """
    pending = set(grid.push_messages(messages))
    sent = len(pending)
    replies: list[Message] = []
    deadline = time.monotonic() + timeout
    while pending:
        got = list(grid.pull_messages(pending))
        replies.extend(got)
        pending.difference_update(m.metadata.reply_to_message_id for m in got)
        if on_poll is not None:
            on_poll(replies, sent)
        if not pending or time.monotonic() >= deadline:
            break
        time.sleep(poll_s)
    return replies


def duration(seconds: float) -> str:
    """``42 s``, ``3 min 05 s``, ``2 h 07 min``."""
    s = round(seconds)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {(s % 3600) // 60:02d} min"


@dataclass
class RoundTicker:
    """Logs ``round r/R: k/n clients done | elapsed | ETA | MB so far`` when a client finishes and at most every
    ``every_s`` seconds while waiting; with ``every_s`` 0 it says nothing. ``bytes_so_far``: the run's bytes
    including this round's broadcast; each reply's bytes are added as it arrives."""

    server_round: int
    rounds: int
    every_s: float
    past_round_s: list[float]
    bytes_so_far: int
    label: str = "clients"
    t0: float = field(default_factory=time.monotonic)
    _done: int = 0
    _last: float = field(default_factory=time.monotonic)

    def eta_s(self, elapsed: float) -> float | None:
        """Seconds left in the run: the mean round so far times the rounds left, minus this round's elapsed."""
        if not self.past_round_s:
            return None
        mean = sum(self.past_round_s) / len(self.past_round_s)
        return max(0.0, mean * (self.rounds - self.server_round + 1) - elapsed)

    def line(self, done: int, sent: int) -> str:
        elapsed = time.monotonic() - self.t0
        eta = self.eta_s(elapsed)
        return (f"round {self.server_round}/{self.rounds}: {done}/{sent} {self.label} done | {duration(elapsed)} | "
                f"ETA {'after round 1' if eta is None else duration(eta)} | {self.bytes_so_far / MB:.1f} MB so far")

    def __call__(self, replies: list[Message], sent: int) -> None:
        if self.every_s <= 0:
            return
        now = time.monotonic()
        new = len(replies) > self._done
        if new:
            for m in replies[self._done:]:
                client_line(m)
                self.bytes_so_far += message_bytes([m])
        if new or (now - self._last >= self.every_s and len(replies) < sent):
            self._done = len(replies)
            self._last = now
            log.info("%s", self.line(len(replies), sent))


def client_line(reply: Message) -> None:
    """One line per finished client from its reply's metrics (reaches the run's log in deployment too)."""
    if reply.has_error():
        log.info("  node %d replied with an error", reply.metadata.src_node_id)
        return
    try:
        m = reply.content["metrics"]
    except KeyError:
        return
    if "train_loss" not in m:
        return
    log.info("  partition %s done: round loss %.4f, %.0f tokens/s, %.1f s, peak RSS %.0f MB", m.get("partition-id", "?"),
             float(m["train_loss"]), float(m.get("tokens_per_s", 0.0)), float(m.get("train_s", 0.0)),
             float(m.get("peak_rss_mb", 0.0)))
