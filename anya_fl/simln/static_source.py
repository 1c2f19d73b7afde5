"""A router whose state is given, not simulated: for serving fixed channels and forwards in an implementation's
shapes (tests of the adapters against the simulated servers, and recorded examples)."""

from __future__ import annotations

from dataclasses import dataclass, field

from core.lightning.model import Channel, Forward, NodeInfo


@dataclass
class StaticSource:
    """A ``LightningSource`` over lists that the caller may change between calls."""

    node: NodeInfo
    channel_list: list[Channel] = field(default_factory=list)
    forward_list: list[Forward] = field(default_factory=list)

    def info(self) -> NodeInfo:
        return self.node

    def channels(self) -> list[Channel]:
        return list(self.channel_list)

    def forwards(self, start: float, end: float) -> list[Forward]:
        return sorted((f for f in self.forward_list if start <= f.received < end), key=lambda f: f.received)
