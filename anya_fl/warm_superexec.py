"""WORKAROUND: a warm ``flower-superexec`` for a SuperNode: import the ClientApp once, fork per message.

Flower 1.42 runs every message a node receives (train, evaluate) in a fresh ``flwr-clientapp``
process, which imports flwr, torch, opacus and our ClientApp before it can start: about 4.3 s of
CPU per message measured on an idle core (``python -c "import fl_client.app, opacus"``), far more
when a round's messages start together on a busy 2-core node. Flower's warm executor pools exist
only for Kubernetes and not for ClientApps.

This launcher is what the SuperNode starts in place of ``flower-superexec`` (a ``flower-superexec``
shim earlier on its PATH, see :func:`anya_fl.deployment.start_supernode`). It imports those modules
once, then runs Flower's own SuperExec loop with one change: a ClientApp task is launched by
``os.fork()`` of this warm process instead of a new interpreter. The child runs Flower's unchanged
``run_clientapp`` with the task's token (same Runtime API, same isolation from the SuperNode, same
parent-PID watch) and exits with ``os._exit``. Other task types keep Flower's subprocess launch.
The parent never runs a torch operation, so no thread pool exists to be broken by the fork.

Run it as a script (``python .../anya_fl/warm_superexec.py <flower-superexec flags>``). It relies on
``SubprocessExecutor.launch`` and ``run_clientapp``'s signature; if they change, it fails at start.
"""

from __future__ import annotations

import gc
import inspect
import os
import signal
import sys
import traceback

READY_LINE = "anya-fl warm ClientApp launcher ready"
PRELOAD = ("torch", "opacus", "fl_client.app", "flwr.supernode.runtime.run_clientapp")


def _reap() -> None:
    """Collect exited children (forked ClientApps) so none stays a zombie."""
    while True:
        try:
            pid, _status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _run_child(spec) -> int:
    """In the forked child: run one ClientApp task with Flower's own code; return the exit code."""
    from flwr.supercore.tls import validate_and_resolve_root_certificates
    from flwr.supernode.runtime.run_clientapp import run_clientapp

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
        signal.signal(sig, signal.SIG_DFL)
    try:
        run_clientapp(runtime_api_address=spec.runtime_api_address, token=spec.token, insecure=spec.insecure,
                      certificates=validate_and_resolve_root_certificates(spec.root_certificates_path,
                                                                          spec.insecure),
                      parent_pid=spec.parent_pid, runtime_dependency_install=spec.runtime_dependency_install)
        return 0
    except SystemExit as exc:  # flwr_exit ends every run_clientapp
        return exc.code if isinstance(exc.code, int) else 1
    except BaseException:  # noqa: BLE001 - a child must never return into the parent's loop
        traceback.print_exc()
        return 1


def patch() -> None:
    """Make SuperExec fork this warm process for ClientApp tasks."""
    from flwr.supercore.constant import TaskType
    from flwr.supercore.superexec.executor import subprocess_executor as se
    from flwr.supernode.runtime.run_clientapp import run_clientapp

    expected = {"runtime_api_address", "token", "insecure", "certificates", "parent_pid",
                "runtime_dependency_install"}
    if not expected <= set(inspect.signature(run_clientapp).parameters):
        raise RuntimeError("flwr run_clientapp changed its signature: the warm launcher does not apply")
    cold_launch = se.SubprocessExecutor.launch
    cold_reconcile = se.SubprocessExecutor.reconcile

    def launch(self, spec):
        _reap()
        if spec.task_type != TaskType.CLIENT_APP:
            return cold_launch(self, spec)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            code = _run_child(spec)
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
        return se.LaunchResult.accepted()

    def reconcile(self) -> None:
        _reap()
        cold_reconcile(self)

    se.SubprocessExecutor.launch = launch
    se.SubprocessExecutor.reconcile = reconcile


def main() -> int:
    """Preload, patch, then run flower-superexec with this process's arguments."""
    import importlib
    import time

    t0 = time.perf_counter()
    for name in PRELOAD:
        importlib.import_module(name)
    patch()
    print(f"{READY_LINE} (preloaded {', '.join(PRELOAD)} in {time.perf_counter() - t0:.1f} s)",
          file=sys.stderr, flush=True)
    gc.collect()
    gc.freeze()  # keep the preloaded objects out of the children's collections (fewer copied pages)
    from flwr.supercore.cli.flower_superexec import flower_superexec

    sys.argv[0] = "flower-superexec"
    return flower_superexec() or 0


if __name__ == "__main__":
    sys.exit(main())
