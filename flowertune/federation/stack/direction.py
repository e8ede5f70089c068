"""Updates that point away from the federation: each decoded update ``reply - global`` is compared with the
coordinate-wise median of the round's updates, and one whose cosine with it is at most
``strategy.min-cosine-to-median`` (default 0: orthogonal or opposed) is rejected with the reason, like a reply
the gate refuses. With an honest majority the median points where the honest nodes go, so a sign-flipped
update (cosine near -1) is left out while honest updates of similar data (cosine well above 0) all pass.
Fewer than 3 updates, or a zero median update: skipped (with two, either one sets the median). Under ``strategy.dp.mode`` it is off:
it depends on the other nodes' updates, outside the accounted mechanism.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, Message, MetricRecord

from flowertune.federation.records import from_array_record
from flowertune.federation.stack.base import StackContext, UpdateLayer

log = logging.getLogger(__name__)


def cosines_to_median(replies: list[dict[str, np.ndarray]], glob: dict[str, np.ndarray]) -> list[float] | None:
    """Cosine of each update ``reply - glob`` with the coordinate-wise median of all of them, or None when that
    median is zero (no direction to compare with). One tensor at a time: the peak memory is the updates of the
    largest tensor, in float64."""
    dots, norms, median_sq = [0.0] * len(replies), [0.0] * len(replies), 0.0
    for k, g in glob.items():
        stacked = np.stack([r[k].ravel() for r in replies]).astype(np.float64) - g.ravel()
        med = np.median(stacked, axis=0)
        median_sq += float(med @ med)
        for i, row in enumerate(stacked):
            dots[i] += float(row @ med)
            norms[i] += float(row @ row)
    if median_sq == 0:
        return None
    return [d / math.sqrt(n * median_sq) if n > 0 else 0.0 for d, n in zip(dots, norms)]


class DirectionCheck(UpdateLayer):
    """Rejects updates whose cosine with the round's median update is at most ``min_cosine``."""

    name = "direction"

    def __init__(self, strategy: Any, ctx: StackContext, min_cosine: float = 0.0) -> None:
        super().__init__(strategy, ctx)
        self.min_cosine = min_cosine
        self.last_cosines: list[float] = []

    def describe(self) -> str:
        return f"direction(cos to median > {self.min_cosine:g})"

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        usable = [m for m in replies if not m.has_error()]
        if len(usable) < 3:
            self.last_cosines = []
            return self.strategy.aggregate_train(server_round, replies)
        cosines = cosines_to_median([from_array_record(m.content["arrays"]) for m in usable], self._global)
        if cosines is None:  # the median update is zero: nothing to point away from
            self.last_cosines = []
            return self.strategy.aggregate_train(server_round, replies)
        self.last_cosines = cosines
        traffic, keep = self.ctx.traffic, []
        for msg, cos in zip(usable, self.last_cosines):
            if cos > self.min_cosine:
                keep.append(msg)
                continue
            node = msg.metadata.src_node_id
            reason = (f"update points away from the round's median update (cosine {cos:.3f} <= "
                      f"strategy.min-cosine-to-median={self.min_cosine:g})")
            traffic.rejected.append(f"node {node}: {reason}")
            traffic.accepted -= 1
            traffic.accepted_nodes.discard(node)
            traffic.client_metrics.pop(node, None)
            log.warning("round %d: rejected the update of node %s: %s", server_round, node, reason)
        return self.strategy.aggregate_train(server_round, keep)
