"""Traffic metering: the bytes of the messages as they go on the wire (encoded), per round."""

from __future__ import annotations

from collections.abc import Iterable

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid

from flowertune.federation.records import message_bytes
from flowertune.federation.stack.base import Layer, RoundTraffic


class Meter(Layer):
    """Counts ``ArrayRecord`` bytes down (per destination node, the leaderboard convention) and up."""

    name = "meter"

    @property
    def traffic(self) -> RoundTraffic:
        return self.ctx.traffic

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        msgs = list(self.strategy.configure_train(server_round, arrays, config, grid))
        self.ctx.traffic.reset(down=message_bytes(msgs))
        return msgs

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        self.ctx.traffic.up = message_bytes(replies)
        return self.strategy.aggregate_train(server_round, replies)

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        msgs = list(self.strategy.configure_evaluate(server_round, arrays, config, grid))
        self.ctx.traffic.eval_down += message_bytes(msgs)
        return msgs
