"""A Grid proxy that collects replies promptly.

Flower 1.42's deployment Grid (``HttpGrid.send_and_receive``) sleeps a fixed 3 s between polls for
replies, so every train and evaluate phase waits up to 3 s after the last node answered. This proxy
pushes the messages and polls ``pull_messages`` every ``poll_s`` seconds instead; every other
attribute is the wrapped Grid's. It uses only the public Grid API, so it works for the simulation's
in-memory Grid too. It is only a transport detail: which nodes are sampled is the round loop's business
(:func:`fl_server.app.run_federation`).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from flwr.app import Message
from flwr.serverapp import Grid


class PromptGrid:
    """Proxy of ``grid`` whose ``send_and_receive`` polls every ``poll_s`` seconds."""

    def __init__(self, grid: Grid, poll_s: float = 0.2) -> None:
        self._grid = grid
        self._poll_s = poll_s

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> list[Message]:
        pending = set(self._grid.push_messages(messages))
        deadline = None if timeout is None else time.monotonic() + timeout
        replies: list[Message] = []
        while pending:
            got = list(self._grid.pull_messages(pending))
            replies.extend(got)
            pending.difference_update(m.metadata.reply_to_message_id for m in got)
            if not pending or (deadline is not None and time.monotonic() >= deadline):
                break
            time.sleep(self._poll_s)
        return replies
