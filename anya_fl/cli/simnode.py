"""`anya-fl simnode`: a simulated Bitcoin Core node to point `anya-fl check` and `anya-fl node` at."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.text import Text

from anya_fl.console import console

if TYPE_CHECKING:
    from anya_fl.simnode import SimNode

DEFAULT_DATADIR = Path(".anya-fl/simnode")
# SimNodeConfig settings -> the option that sets them (errors name the option)
_OPTION = {"seed": "seed", "profile": "profile", "transactions": "transactions", "speed": "speed",
           "rpcuser": "rpcuser", "rpcpassword": "rpcpassword", "cookie_dir": "datadir", "start_block": "start-block",
           "warmup_s": "warmup", "maxmempool_mb": "maxmempool", "replacement_share": "replacements",
           "block_weight_limit": "block-weight"}


def simnode(
    seed: Annotated[int, typer.Option(help="Seed of the simulated chain (same seed: same blocks, txids, hashes).")]
    = 0,
    profile: Annotated[str, typer.Option(help="Whose node: exchange, merchant, hobbyist or miner (its own "
                                              "transactions, for --labels).")] = "merchant",
    transactions: Annotated[int, typer.Option(help="Transactions in the simulated chain (200,000: about 18 "
                                                   "simulated hours of arrivals).")] = 200_000,
    speed: Annotated[float, typer.Option(help="Simulated seconds per wall second (600: a block a second on "
                                              "average; 0: a frozen clock).")] = 60.0,
    port: Annotated[int, typer.Option(help="RPC port on 127.0.0.1 (18443: regtest's).")] = 18443,
    rpcuser: Annotated[str | None, typer.Option(help="RPC user (else cookie auth: DATADIR/.cookie, as Core).")]
    = None,
    rpcpassword: Annotated[str | None, typer.Option(envvar="ANYA_FL_RPC_PASSWORD",
                                                    help="RPC password (or ANYA_FL_RPC_PASSWORD).")] = None,
    datadir: Annotated[Path, typer.Option(help="Where the .cookie file is written.")] = DEFAULT_DATADIR,
    start_block: Annotated[int, typer.Option(help="Blocks 0..N are already mined at start.")] = 12,
    warmup: Annotated[float, typer.Option(help="Simulated seconds answering -28 'Loading block index...'.")] = 0.0,
    maxmempool: Annotated[float, typer.Option(help="Mempool limit in MB (Core's -maxmempool); a small one evicts "
                                                   "and raises mempoolminfee.")] = 300.0,
    replacements: Annotated[float, typer.Option(help="Share of RBF transactions preceded by a lower-fee version "
                                                     "that they replace.")] = 0.0,
    block_weight: Annotated[int, typer.Option(help="Block weight limit of the simulated chain.")] = 4_000_000,
    labels: Annotated[Path | None, typer.Option(help="Write an operator labels file (CSV kind,id,label) at "
                                                     "start.")] = None,
    labels_share: Annotated[float, typer.Option(help="Share of the node's own illicit transactions labeled.")]
    = 0.5,
    reorg_every: Annotated[int, typer.Option(help="Show a stale branch every N new blocks (0: never).")] = 0,
    reorg_depth: Annotated[int, typer.Option(help="Blocks in each stale branch.")] = 1,
    outage_at: Annotated[float | None, typer.Option(help="Simulated seconds after start when the RPC goes "
                                                         "down.")] = None,
    outage_for: Annotated[float, typer.Option(help="Simulated seconds the outage lasts.")] = 600.0,
    scenario: Annotated[list[str] | None, typer.Option(help="A scenario KIND@SECONDS after start (repeatable; "
                                                            "'-' or '_' in KIND): eclipse, inbound-flood, addr-spam, "
                                                            "partition (90 min), stale-fork, slow-propagation (blocks "
                                                            "arrive 2 min after they are mined, for 1 h), degraded-relay "
                                                            "(the link saturates over 6 h: pings grow, blocks arrive "
                                                            "later), "
                                                            "mempool-flood (50,000 vB/s "
                                                            "at 1 sat/vB for 2 h), double-spend and rbf-replacement "
                                                            "(each replaces the mempool's first transaction at that "
                                                            "time, printed at start: `anya-fl watch add` it before "
                                                            "then); for `anya-fl watch`.")] = None,
) -> None:
    """Serve a simulated Bitcoin Core node's JSON-RPC on 127.0.0.1, its chain unfolding in accelerated time.

    Core 27's reply shapes for the blockchain, mempool, fee, network and UTXO methods; scenarios: warm-up,
    outages, reorgs, a full mempool, RBF replacements. Ctrl-C stops it.
    """
    import math
    import signal
    import threading

    from rich.live import Live
    from rich.markup import escape

    from anya_fl.simnode import SimNode, SimNodeConfig
    from core.errors import ConfigError

    checks = [
        ("port", 0 <= port <= 65_535, "must be from 0 to 65535"),
        ("labels-share", 0 <= labels_share <= 1, "must be in [0, 1]"),
        ("reorg-every", reorg_every >= 0, "must be >= 0 blocks"),
        ("reorg-depth", reorg_depth >= 1, "must be >= 1 block"),
        ("outage-at", outage_at is None or (math.isfinite(outage_at) and outage_at >= 0), "must be >= 0"),
        ("outage-for", math.isfinite(outage_for) and outage_for > 0, "must be > 0 simulated seconds"),
    ]
    for option, ok, problem in checks:
        if not ok:
            value = {"port": port, "labels-share": labels_share, "reorg-every": reorg_every,
                     "reorg-depth": reorg_depth, "outage-at": outage_at, "outage-for": outage_for}[option]
            raise ConfigError(option, f"{value!r} {problem}")
    cfg = SimNodeConfig(seed=seed, profile=profile, transactions=transactions, speed=speed, rpcuser=rpcuser,
                        rpcpassword=rpcpassword, cookie_dir=None if rpcuser else datadir, start_block=start_block,
                        warmup_s=warmup, maxmempool_mb=maxmempool, replacement_share=replacements,
                        block_weight_limit=block_weight)
    try:
        cfg.validate()
        with console.status(f"simulating {transactions:,} transactions (seed {seed})"):
            node = SimNode(cfg)
    except ConfigError as exc:
        setting = exc.setting.removeprefix("simnode.")
        raise ConfigError(_OPTION.get(setting, setting), exc.problem) from None
    if labels is not None:
        count = node.write_labels(labels, labels_share, seed)
        console.print(f"operator labels: {count:,} transactions in {escape(str(labels))}")
    for kind, at in _scenarios(scenario or []):
        note = _inject(node, kind, at)
        if note:
            console.print(note, highlight=False, soft_wrap=True)
    node.start(port)
    stop = threading.Event()
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        if node.cookie_path is not None:
            flags = f"--rpc-url {node.url} --rpc-cookie {node.cookie_path}"
            auth = f"cookie {node.cookie_path}"
        else:
            flags = f"--rpc-url {node.url} --rpc-user {rpcuser}"
            auth = f"rpcuser {rpcuser} (password: the one given; export it as ANYA_FL_RPC_PASSWORD for the client)"
        console.print(f"simulated Bitcoin Core 27.0 (mainnet shapes) at {node.url}", highlight=False)
        console.print(f"auth: {escape(auth)}", highlight=False)
        console.print(f"try:  anya-fl check {escape(flags)}", highlight=False, soft_wrap=True)
        console.print(f"      anya-fl node ... {escape(flags)}", highlight=False, soft_wrap=True)
        console.print("Ctrl-C stops it", highlight=False)
        outage_done = False
        last_reorg_tip = node.tip_height()
        with Live(_status(node), console=console, refresh_per_second=4, transient=False) as live:
            while not stop.wait(0.25):
                elapsed = node.now() - node.t_start
                if outage_at is not None and not outage_done and elapsed >= outage_at:
                    node.inject_outage(outage_for)
                    outage_done = True
                view = node.view()
                if reorg_every and view.reorg is None and view.tip - last_reorg_tip >= reorg_every:
                    node.inject_reorg(min(reorg_depth, view.nb))
                    last_reorg_tip = view.tip
                live.update(_status(node))
    except KeyboardInterrupt:
        pass
    finally:
        node.stop()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    if not console.is_terminal:
        console.print()  # the live line's final render ends without a newline off a terminal
    console.print("simnode stopped")


SCENARIOS = {"eclipse": "inject_eclipse", "inbound-flood": "inject_inbound_flood", "addr-spam": "inject_addr_spam",
             "partition": "inject_partition", "stale-fork": "inject_stale_fork",
             "slow-propagation": "inject_slow_propagation", "degraded-relay": "inject_degraded_relay",
             "mempool-flood": "inject_mempool_flood", "double-spend": "inject_double_spend",
             "rbf-replacement": "inject_rbf_bump"}
_REPLACING = ("double-spend", "rbf-replacement")  # they replace a mempool transaction


def _scenarios(specs: list[str]) -> list[tuple[str, float]]:
    """``KIND@SECONDS`` -> (kind with '-', simulated seconds after start); ConfigError("scenario", ...) otherwise.
    KIND may be written with '_' (as `truth.network_events` names it) or '-'."""
    import math

    from core.errors import ConfigError

    out = []
    for spec in specs:
        kind, _, at = spec.partition("@")
        kind = kind.replace("_", "-")
        try:
            seconds = float(at)
        except ValueError:
            seconds = math.nan
        if kind not in SCENARIOS or not math.isfinite(seconds) or seconds < 0:
            raise ConfigError("scenario", f"{spec!r}: expected KIND@SECONDS with KIND one of {', '.join(SCENARIOS)} "
                                          "and SECONDS >= 0 simulated seconds after start")
        out.append((kind, seconds))
    return out


def _inject(node: SimNode, kind: str, at: float) -> str | None:
    """Inject scenario ``kind`` ``at`` simulated seconds after the node's start; for a replacement (double-spend,
    rbf-replacement) of the mempool's first transaction at that time, a line naming both txids to print.
    ConfigError("scenario", ...) when the mempool is empty then."""
    from core.errors import ConfigError

    t = node.t_start + at
    if kind not in _REPLACING:
        getattr(node, SCENARIOS[kind])(t)
        return None
    tl = node.timeline
    mempool = tl.mempool(t)
    chain_txs = [int(e) for e in mempool if e < tl.n and int(e) not in tl.conflict_entry]  # not phantoms
    if not chain_txs:
        raise ConfigError("scenario", f"{kind}@{at:g}: the mempool has no transaction to replace then; pick another "
                                      f"time")
    txid = node.truth.txid(chain_txs[0])
    replacement = getattr(node, SCENARIOS[kind])(txid, t)
    what = "fee-bumped (the same outputs, a smaller change)" if kind == "rbf-replacement" else "double-spent"
    return (f"{kind}@{at:g}: tx {txid} (the mempool's first then) is {what} by {replacement}; "
            f"watch it with `anya-fl watch add {txid}` before then")


def _status(node: SimNode) -> Text:
    """One live status line: height, mempool, simulated time, scenario state."""
    from anya_fl.simnode.flood import FLOOD_TX_VSIZE

    view = node.view()
    members = node.timeline.mempool(view.t)
    vbytes = int(node.timeline.e_vsize[members].sum())
    flood = node.flood_count(view.t, vbytes)
    t = int(view.t)
    size = f"{len(members) + flood:,} tx ({(vbytes + flood * FLOOD_TX_VSIZE) / 1e6:.2f} MvB" + \
        (f", {flood:,} of a flood)" if flood else ")")
    parts = [f"height {view.tip:,}", f"mempool {size}",
             f"mempoolminfee {node.mempool_min_fee(view.t):.2f} sat/vB",
             f"sim {t // 3600:02d}:{t // 60 % 60:02d}:{t % 60:02d} (x{node.config.speed:g})"]
    if view.nb >= node.chain.n_blocks:
        parts.append("chain ended")
    if view.reorg is not None:
        parts.append(f"stale branch of {view.reorg.depth} shown")
    if node.in_outage:
        parts.append("RPC down (outage)")
    return Text(" | ".join(parts))
