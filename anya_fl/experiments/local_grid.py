"""An in-process Flower Grid: the real ServerApp round loop and the real ClientApp, without a transport.

For experiments that run many federations (``anya-fl bench robustness``): each pushed message is handed
to the ClientApp object in this process, with a per-node Context (node config with ``partition-id``,
persistent ``state``), exactly as Flower's runtime calls it; replies carry the node's id. Nothing of our
own is replaced: the server code (strategies, screening, checkpoints) and the ClientApp (DP training,
health gate; the attack ClientApp of :mod:`anya_fl.experiments.attack_app` for attack runs) are the ones
the simulation runs. What it leaves out is Flower's process isolation and scheduling, which do not
change any number it produces.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from flwr.app import Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid

from anya_fl.flwr_compat.task_identity import assign_message_id, running_on_node, set_task_identity

FIRST_NODE_ID = 1000


class LocalGrid(Grid):
    """Nodes FIRST_NODE_ID + i holding partition i; messages are answered synchronously on push."""

    def __init__(self, app: ClientApp, nodes: int, run_config: dict[str, Any], run_id: int = 1) -> None:
        self.app = app
        self.run_config = dict(run_config)
        self._run_id = run_id
        self.contexts = {FIRST_NODE_ID + i: Context(run_id=run_id, node_id=FIRST_NODE_ID + i,
                                        node_config={"partition-id": i, "num-partitions": nodes},
                                        state=RecordDict(), run_config=self.run_config) for i in range(nodes)}
        self._replies: dict[str, Message] = {}
        set_task_identity(run_id)

    # Grid API ----------------------------------------------------------------------------------------

    def set_run(self, run: Any) -> None:  # the run is fixed at construction
        pass

    @property
    def run(self) -> Any:
        return None

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str,
                       ttl: float | None = None) -> Message:
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return list(self.contexts)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for msg in messages:
            msg_id = assign_message_id(msg)
            node = int(msg.metadata.dst_node_id)
            with running_on_node(node):
                reply = self.app(msg, self.contexts[node])
            self._replies[msg_id] = reply
            ids.append(msg_id)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [self._replies.pop(i) for i in list(message_ids) if i in self._replies]

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        return self.pull_messages(self.push_messages(messages))
