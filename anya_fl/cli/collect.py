"""`anya-fl collect` and `anya-fl collect status`: turn this node's Bitcoin Core into local training data."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from anya_fl.cli.node import BlockMaxWeight, RpcCookie, RpcUrl, RpcUser
from anya_fl.console import console, err_console, fmt, table

collect_app = typer.Typer(
    help="Collect training data from this node's Bitcoin Core into a local store (it never leaves the node).",
    invoke_without_command=True,
    no_args_is_help=False,
)

DataDir = Annotated[Path | None, typer.Option(help="Directory of the collector's store (<data-dir>/collector/).")]


@collect_app.callback()
def collect(
    ctx: typer.Context,
    rpc_url: RpcUrl = None,
    rpc_cookie: RpcCookie = None,
    rpc_user: RpcUser = None,
    data_dir: DataDir = None,
    labels: Annotated[Path | None, typer.Option(help="Operator labels: CSV kind,id,label (kind txid|address, label "
                                                     "illicit|licit) or one txid per line (illicit).")] = None,
    retain_days: Annotated[float, typer.Option(help="Delete data older than this many days (node time).")] = 90.0,
    max_mb: Annotated[float, typer.Option(help="Prune the oldest data beyond this store size.")] = 2048.0,
    interval: Annotated[float, typer.Option(help="Seconds between polls.")] = 5.0,
    zmq: Annotated[str | None, typer.Option(help="Core's zmqpubsequence endpoint (tcp://HOST:PORT): wakes the poll "
                                                 "early; needs pyzmq, else polling only.")] = None,
    backfill: Annotated[int, typer.Option(help="On a new store, start this many blocks below the node's tip.")] = 0,
    once: Annotated[bool, typer.Option(help="Catch up with the node once and exit.")] = False,
    block_max_weight: BlockMaxWeight = 4_000_000,
) -> None:
    """Follow Bitcoin Core (blocks, reorgs, the mempool) into <data-dir>/collector/store.sqlite.

    Credentials: --rpc-cookie, or --rpc-user with the password in ANYA_FL_RPC_PASSWORD. Ctrl-C stops.
    """
    if ctx.invoked_subcommand is not None:
        return
    from core.bitcoin.rpc import BitcoinRPC, operator_rpc_config
    from core.collector.follower import Collector, CollectorSettings
    from core.collector.store import CollectorStore
    from core.errors import AnyaError, ConfigError

    if data_dir is None:
        raise ConfigError("data-dir", "missing: the directory for the collector's store")
    if not rpc_url:
        raise ConfigError("rpc-url", "missing: Bitcoin Core's JSON-RPC URL, e.g. http://127.0.0.1:8332")
    if not interval > 0:
        raise ConfigError("interval", f"{interval} must be > 0 seconds")
    settings = CollectorSettings(retain_days=retain_days, max_mb=max_mb, backfill_blocks=backfill,
                                 block_max_weight=block_max_weight).validate()
    rpc = BitcoinRPC(operator_rpc_config(rpc_url, rpc_cookie, rpc_user))
    store = CollectorStore.open(data_dir)
    collector = None
    try:
        if labels is not None:
            import_labels(store, labels)
        collector = Collector(rpc, store, settings)
        if once:
            res = collector.sync()
            _print_once(collector, res)
            if res.state not in ("ok", "catching_up"):
                raise AnyaError(res.message)
            return
        _follow(collector, interval, zmq)
    finally:
        if collector is not None:
            collector.close()
        store.close()


def import_labels(store: Any, labels: Path) -> None:
    """Read the operator's labels file into the store; show what was read and the lines it skipped."""
    from core.collector.labels import read_operator_labels

    read = read_operator_labels(labels)
    store.import_operator_labels(read.labels, str(labels), read.skipped)
    s = read.summary
    console.print(f"labels: {s['labels']:,} from {labels} ({s['txid']:,} txid, {s['address']:,} address, "
                  f"{s['illicit']:,} illicit), {s['skipped']} line{'' if s['skipped'] == 1 else 's'} skipped")
    for skip in read.skipped[:10]:
        err_console.print(f"[yellow]{escape(skip.ref)}: {escape(skip.reason)}[/yellow]", soft_wrap=True)


def _print_once(collector: Any, res: Any) -> None:
    t = collector.totals
    console.print(f"{res.state}: tip {fmt(res.tip_height)} (node {fmt(res.node_height)}); stored "
                  f"{t['blocks_connected']:,} blocks, {t['txs_from_mempool']:,} mempool + {t['txs_from_blocks']:,} "
                  f"block transactions, {t['snapshots']:,} snapshots, {t['fee_labels']:,} fee labels, "
                  f"{t['skipped']:,} skipped" + (f"; {res.message}" if res.message else ""))


def _live_table(collector: Any) -> Any:
    t, st = collector.totals, collector.status
    last = collector.last_result
    rows = [
        ["state", st.get("state"), st.get("message") or ""],
        ["tip", fmt(last.tip_height if last else None), f"node {fmt(st.get('node_height'))}"],
        ["peers", fmt(st.get("peers")), ""],
        ["mempool", fmt(len(collector.view)), f"node {fmt(st.get('mempool_size'))} txs"],
        ["blocks", fmt(t["blocks_connected"]), f"{t['reorgs']} reorgs, {t['blocks_disconnected']} disconnected"],
        ["transactions", fmt(t["txs_from_mempool"] + t["txs_from_blocks"]),
         f"{t['txs_from_mempool']:,} via mempool, {t['replaced']:,} replaced, {t['evicted']:,} evicted"],
        ["snapshots / fee labels", fmt(t["snapshots"]), f"{t['fee_labels']:,} labels"],
        ["skipped", fmt(t["skipped"]), (collector.messages[-1] if collector.messages else "")[:80]],
    ]
    return table("anya-fl collect", ["", "value", "detail"], rows)


def _follow(collector: Any, interval: float, zmq: str | None) -> None:
    stop = threading.Event()
    if console.is_terminal:
        from rich.live import Live

        with Live(_live_table(collector), console=console, refresh_per_second=2, transient=False) as live:
            collector.run(stop, interval, zmq_endpoint=zmq, on_poll=lambda _: live.update(_live_table(collector)))
        return
    last_state = [None]

    def show(res: Any) -> None:
        if res.blocks_connected or res.blocks_disconnected or res.new_txs or res.state != last_state[0]:
            console.print(f"{res.state}: tip {fmt(res.tip_height)}, +{res.blocks_connected} blocks"
                          f"{f', -{res.blocks_disconnected} (reorg)' if res.blocks_disconnected else ''}, "
                          f"+{res.new_txs} mempool txs, {res.removed} removed, +{res.labels_added} fee labels"
                          + (f" — {res.message}" if res.message and res.state != "ok" else ""),
                          soft_wrap=True, highlight=False)
        last_state[0] = res.state

    collector.run(stop, interval, zmq_endpoint=zmq, on_poll=show)


@collect_app.command("status")
def status(
    data_dir: Annotated[Path, typer.Option(help="Directory of the collector's store.")],
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the status as JSON to this file ('-': print "
                                                                "it instead of the tables).")] = None,
) -> None:
    """Rows per task, label coverage, time span, last height, store size and skipped counts."""
    from core.collector.status import collector_status
    from core.storage import atomic_write_json

    doc = collector_status(data_dir)
    if json_out is not None and str(json_out) == "-":
        console.print_json(json.dumps(doc, default=str))
        return
    if json_out is not None:
        atomic_write_json(json_out, doc)
    c = doc["counts"]
    span = doc["time_span"]
    console.print(table("store", ["store", "size MB", "tip", "blocks", "transactions", "pending", "snapshots",
                                  "fee labels", "time span (h)"],
                        [[doc["store"], doc["store_mb"], doc["tip_height"], c["blocks"], c["transactions"], c["pending"],
                          c["snapshots"], c["fee_labels"], (span[1] - span[0]) / 3600 if span else None]]))
    tasks = doc["tasks"]
    rows = []
    for task in ("fraud", "fee", "anomaly"):
        r = tasks["rows"].get(task)
        rows.append([task, *(r[s] if r else 0 for s in ("train", "val", "test")),
                     tasks["unavailable"].get(task) or _coverage(task, tasks["label_coverage"].get(task, {}))])
    console.print(table("tasks", ["task", "train", "val", "test", "labels"], rows))
    sk = doc["skipped"]
    if sk["total"]:
        console.print(table("skipped", ["kind", "count"], sorted(sk["by_kind"].items())))
        for s in sk["recent"]:
            err_console.print(f"[yellow]{escape(s['kind'])} {escape(s['ref'])}: {escape(s['reason'])}"
                              f"{' (x' + str(s['count']) + ')' if s['count'] > 1 else ''}[/yellow]", soft_wrap=True)
    state = doc["collector"]
    if state:
        message = f" ({state['message']})" if state.get("message") else ""
        console.print(f"collector (last saved state): {state.get('state')}{message}, peers {fmt(state.get('peers'))}, "
                      f"rss {fmt((state.get('resources') or {}).get('rss_mb'))} MB", soft_wrap=True, highlight=False)
    if json_out is not None:
        console.print(f"wrote {json_out}")


def _coverage(task: str, cov: dict) -> str:
    if task == "fraud":
        return f"{cov.get('labeled', 0):,} of {cov.get('of', 0):,} transactions labeled ({cov.get('illicit', 0):,} illicit)"
    if task == "fee":
        return f"{cov.get('snapshots_labeled', 0):,} of {cov.get('of', 0):,} snapshots labeled"
    return f"{cov.get('with_arrival_snapshot', 0):,} of {cov.get('of', 0):,} with an arrival snapshot (unsupervised)"
