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

It is also where the node decides which code it runs: before Flower unpacks a run's app bundle (FAB),
:func:`core.security.app_bundle.verify_app_bundle` checks that every file in it is byte-identical to
this node's installed anya-fl; any other bundle is refused with the reason in the node's reply, and
none of its files is unpacked or imported.

Run it as ``python -m anya_fl.flwr_compat.warm_superexec <flower-superexec flags>``. It relies on
``SubprocessExecutor.launch``, ``run_clientapp``'s signature and its module-level ``install_from_fab``;
if they change, it fails at start.
"""

from __future__ import annotations

import gc
import inspect
import os
import signal
import sys
import traceback

from anya_fl.flwr_compat import require_pinned_flwr

require_pinned_flwr(__name__)

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


def trusted_install(install_from_fab):
    """Flower's ``install_from_fab``, preceded by the check that the bundle is this node's own anya-fl."""
    from anya_fl.deployment import project_root
    from core.security.app_bundle import verify_app_bundle

    def install(fab_file, *args, **kwargs):
        if not isinstance(fab_file, bytes):
            raise TypeError("the trusted install expects the bundle's bytes")
        verify_app_bundle(fab_file, project_root())
        return install_from_fab(fab_file, *args, **kwargs)

    return install


def patch() -> None:
    """Make SuperExec fork this warm process for ClientApp tasks, each checking its app bundle first."""
    from flwr.supercore.constant import TaskType
    from flwr.supercore.superexec.executor import subprocess_executor as se
    from flwr.supernode.runtime import run_clientapp as rc
    from flwr.supernode.runtime.run_clientapp import run_clientapp

    expected = {"runtime_api_address", "token", "insecure", "certificates", "parent_pid",
                "runtime_dependency_install"}
    if not expected <= set(inspect.signature(run_clientapp).parameters):
        raise RuntimeError("flwr run_clientapp changed its signature: the warm launcher does not apply")
    if not callable(getattr(rc, "install_from_fab", None)):
        raise RuntimeError("flwr run_clientapp no longer calls install_from_fab: app bundles cannot be checked")
    rc.install_from_fab = trusted_install(rc.install_from_fab)
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
