"""Flower 1.42's per-process task identity and message ids, for code that runs a ClientApp without Flower's runtime.

Flower's runtime sets ``flwr.supercore.task_identity.TaskIdentity`` (run, task, node) before it calls a
ClientApp, and gives every pushed message an id (``Message.metadata.message_id`` reads the private
``_message_id``). The in-process grid (:mod:`anya_fl.experiments.local_grid`) and the simulation entry
point do the same through these helpers; ``tests/test_flwr_compat.py`` checks both internals.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from flwr.app import Message
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.supercore.task_identity import TaskIdentity

from anya_fl.flwr_compat import require_pinned_flwr

require_pinned_flwr(__name__)

__all__ = ["SUPERLINK_NODE_ID", "assign_message_id", "running_on_node", "set_task_identity"]


def set_task_identity(run_id: int, task_id: int = 1, node_id: int = SUPERLINK_NODE_ID) -> None:
    """What Flower's runtime records for the current process: the run, the task, and which node runs it."""
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = run_id, task_id, node_id


@contextmanager
def running_on_node(node_id: int) -> Iterator[None]:
    """Inside: code runs "on" ``node_id`` (as a ClientApp would); after: back on the SuperLink."""
    TaskIdentity.node_id = node_id
    try:
        yield
    finally:
        TaskIdentity.node_id = SUPERLINK_NODE_ID


def assign_message_id(msg: Message) -> str:
    """Give a message the id Flower's push would (a fresh one); return it."""
    msg.metadata.__dict__["_message_id"] = uuid.uuid4().hex
    return msg.metadata.message_id
