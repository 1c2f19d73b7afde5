"""Contract tests: the Flower internals anya_fl.flwr_compat relies on still have the shape it expects.

Each fails loudly when Flower changes, naming the internal; the modules themselves refuse to import
under another flwr version.
"""

from __future__ import annotations

import inspect
import subprocess
import sys

import pytest

from anya_fl import flwr_compat
from anya_fl.deployment import project_root


def test_modules_refuse_another_flower(monkeypatch) -> None:
    flwr_compat.require_pinned_flwr("test")  # the installed one is the pinned one
    monkeypatch.setattr(flwr_compat, "version", lambda _name: "1.43.0")
    with pytest.raises(flwr_compat.FlowerVersionError, match=r"test uses Flower 1\.42\.0 internals, but flwr is 1\.43\.0"):
        flwr_compat.require_pinned_flwr("test")


def test_pinned_version_is_the_projects_pin() -> None:
    text = (project_root() / "pyproject.toml").read_text()
    assert f'"flwr[simulation]=={flwr_compat.PINNED_FLWR}"' in text


def test_warm_launcher_contract() -> None:
    """SubprocessExecutor.launch/reconcile, run_clientapp's parameters and its module-level install_from_fab."""
    from flwr.supercore.superexec.executor import subprocess_executor as se
    from flwr.supernode.runtime import run_clientapp as rc

    assert callable(se.SubprocessExecutor.launch) and callable(se.SubprocessExecutor.reconcile)
    assert {"runtime_api_address", "token", "insecure", "certificates", "parent_pid",
            "runtime_dependency_install"} <= set(inspect.signature(rc.run_clientapp).parameters)
    assert "install_from_fab(" in inspect.getsource(rc.run_clientapp)  # the call the bundle check wraps
    # patch() itself (in a fresh process: it changes Flower's classes) installs the bundle check
    code = ("from anya_fl.flwr_compat.warm_superexec import patch\n"
            "from flwr.supernode.runtime import run_clientapp as rc\n"
            "before = rc.install_from_fab\npatch()\n"
            "assert rc.install_from_fab is not before and rc.install_from_fab.__qualname__.startswith('trusted_install')\n"
            "print('patched')")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         cwd=project_root())
    assert res.returncode == 0 and "patched" in res.stdout, res.stderr[-2000:]


def test_task_identity_and_message_id_contract() -> None:
    """TaskIdentity's three fields and Message.metadata's private _message_id behind message_id."""
    from flwr.app import ConfigRecord, Message, RecordDict
    from flwr.supercore.task_identity import TaskIdentity

    from anya_fl.flwr_compat.task_identity import (
        SUPERLINK_NODE_ID,
        assign_message_id,
        running_on_node,
        set_task_identity,
    )

    set_task_identity(7)
    assert (TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id) == (7, 1, SUPERLINK_NODE_ID)
    with running_on_node(1001):
        assert TaskIdentity.node_id == 1001
    assert TaskIdentity.node_id == SUPERLINK_NODE_ID
    msg = Message(RecordDict({"c": ConfigRecord({"x": 1})}), dst_node_id=1001, message_type="query")
    first = assign_message_id(msg)
    assert first and msg.metadata.message_id == first and assign_message_id(msg) != first
