"""SimNodeConfig: what the simulated node serves and how its clock runs."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from core.data.categories import PROFILE_ORDER
from core.errors import ConfigError

GENESIS_EPOCH = 1_700_000_000  # UNIX time of simulated second 0 (block header time = epoch + ceil(block_time))
MIN_RELAY_SAT_VB = 1.0  # -minrelaytxfee 0.00001 BTC/kvB
INCREMENTAL_SAT_VB = 1.0  # -incrementalrelayfee 0.00001 BTC/kvB
USAGE_PER_VBYTE = 3  # mempool memory usage per vbyte (a rough fit of Core's DynamicMemoryUsage)
ROLLING_FEE_HALFLIFE_S = 12 * 3600.0  # Core's ROLLING_FEE_HALFLIFE
MB = 1_000_000  # Core's -maxmempool is in MB of 1,000,000 bytes


@dataclass(frozen=True)
class SimNodeConfig:
    """Settings of a simulated Bitcoin Core node (see ``anya_fl.simnode``)."""

    seed: int = 0
    profile: str = "merchant"
    transactions: int = 20_000
    speed: float = 60.0  # simulated seconds per wall second; 0: manual clock (advance())
    rpcuser: str | None = None
    rpcpassword: str | None = field(default=None, repr=False)
    cookie_dir: Path | None = None  # without rpcuser/rpcpassword: <cookie_dir>/.cookie, as Core
    start_block: int = 12  # blocks 0..start_block are mined when the node starts
    warmup_s: float = 0.0  # simulated seconds answering -28 "Loading block index..."
    maxmempool_mb: float = 300.0
    replacement_share: float = 0.0  # share of RBF-signalling txs preceded by a lower-fee phantom version
    block_weight_limit: int = 4_000_000  # of the simulated chain (smaller: more, smaller blocks)
    mempool_tx_details: bool = False  # True: getrawtransaction <mempool txid> 2 carries fee and prevouts (Core 27: no)

    def __post_init__(self) -> None:
        if isinstance(self.cookie_dir, str):
            object.__setattr__(self, "cookie_dir", Path(self.cookie_dir))

    def validate(self) -> SimNodeConfig:
        """Return self, or raise ConfigError naming the setting and the problem."""

        def whole(v: object) -> bool:
            return isinstance(v, int) and not isinstance(v, bool)

        def number(v: object) -> bool:
            return isinstance(v, int | float) and not isinstance(v, bool) and v == v and abs(v) != float("inf")

        checks = [
            ("seed", whole(self.seed) and self.seed >= 0, "must be an integer >= 0"),
            ("profile", self.profile in PROFILE_ORDER, f"must be one of {', '.join(PROFILE_ORDER)}"),
            ("transactions", whole(self.transactions) and 1_000 <= self.transactions <= 5_000_000,
             "must be an integer from 1,000 to 5,000,000"),
            ("speed", number(self.speed) and 0 <= self.speed <= 1e6, "must be from 0 (manual clock) to 1,000,000"),
            ("start_block", whole(self.start_block) and self.start_block >= 0, "must be an integer >= 0"),
            ("warmup_s", number(self.warmup_s) and self.warmup_s >= 0, "must be >= 0 simulated seconds"),
            ("maxmempool_mb", number(self.maxmempool_mb) and 0 < self.maxmempool_mb <= 100_000,
             "must be > 0 and at most 100,000 MB"),
            ("replacement_share", number(self.replacement_share) and 0 <= self.replacement_share <= 1,
             "must be in [0, 1]"),
            ("block_weight_limit", whole(self.block_weight_limit) and 100_000 <= self.block_weight_limit <= 4_000_000,
             "must be an integer from 100,000 to 4,000,000 WU"),
        ]
        for name, ok, problem in checks:
            if not ok:
                raise ConfigError(f"simnode.{name}", f"{getattr(self, name)!r} {problem}")
        if (self.rpcuser is None) != (self.rpcpassword is None):
            missing = "rpcpassword" if self.rpcpassword is None else "rpcuser"
            raise ConfigError(f"simnode.{missing}", "set both rpcuser and rpcpassword, or neither (cookie auth)")
        if self.rpcuser is not None:
            if not self.rpcuser or ":" in self.rpcuser:
                raise ConfigError("simnode.rpcuser", "must be non-empty and must not contain ':'")
            if not self.rpcpassword:
                raise ConfigError("simnode.rpcpassword", "must not be empty")
        elif self.cookie_dir is None:
            raise ConfigError("simnode.cookie_dir", "no credentials: set rpcuser/rpcpassword, or cookie_dir for "
                                                    "a .cookie file")
        return self

    @property
    def maxmempool_bytes(self) -> int:
        return int(round(self.maxmempool_mb * MB))
