"""What every part of the benchmark shares: the fixed names and numbers, the run's profile
(full or quick, immutable), where files go, and the progress log.

Nothing here changes during a run: a profile is chosen once from the command line and handed to
whoever needs it.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

HOST = "127.0.0.1"  # the only target, ever
ZONE = "cdn.example.com"
GEO_NAME = f"www.{ZONE}"
BIG_ZONE = "big.example.com"  # the zone of many nearest-PoP names
SERVER_CPU = "0"  # the server is pinned here, dnsperf to CLIENT_CPU (when there are 2 CPUs)
CLIENT_CPU = "1"
FIXED_QPS = 2000  # the rate of the latency runs
NOISY_PCT = 10.0  # other sessions' load (% of one CPU) above which a saturated run is retried
# at 2,000 qps a server idles 97% of the time and its tail is mostly the wait for a CPU that
# someone else holds: a latency run is tried again above this much other load, more times
LATENCY_NOISY_PCT = 3.0
SATURATE = ("-T", "2", "-c", "20", "-q", "100", "-t", "2")  # dnsperf: saturating, no drops
FIXED = ("-c", "4", "-q", "50", "-t", "2", "-Q", str(FIXED_QPS))

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent


@dataclass(frozen=True)
class Profile:
    """How big and how long: `full` for figures, `quick` to check that everything runs."""

    name: str
    warm_subnets: int
    cold_subnets: int
    cold_latency_subnets: int  # split among the latency attempts, each its own never-seen share
    block_networks: int  # cold client /24s a resolver asks for (resolver cache blocks)
    saturate_seconds: float
    latency_seconds: float
    saturate_attempts: int
    latency_attempts: int
    quiet_wait_s: float  # how long to wait for a quiet machine before each measured run
    big_zone_names: int
    reload_load_seconds: float  # the length of the load during which the big zone is reloaded
    big_db: bool  # build the ~100 MB synthetic database (start-up and memory on it)
    index_wait_s: float  # how long to wait for geodns's geo_index_ready event (when it has one)

    def with_seconds(self, seconds: float) -> Profile:
        return dataclasses.replace(self, saturate_seconds=seconds, latency_seconds=seconds)


PROFILES = {
    "full": Profile(
        name="full",
        warm_subnets=10_000,
        cold_subnets=1_000_000,
        cold_latency_subnets=210_000,  # 5 attempts x 20 s x 2,000 qps, each its own
        block_networks=200_000,
        saturate_seconds=15,
        latency_seconds=20,
        saturate_attempts=3,
        latency_attempts=5,
        quiet_wait_s=30,
        big_zone_names=10_000,
        reload_load_seconds=30,  # a reload of many seconds still ends inside the load
        big_db=True,
        index_wait_s=300,
    ),
    "quick": Profile(
        name="quick",
        warm_subnets=2_000,
        cold_subnets=60_000,
        cold_latency_subnets=12_000,
        block_networks=20_000,
        saturate_seconds=3,
        latency_seconds=3,
        saturate_attempts=1,
        latency_attempts=2,
        quiet_wait_s=2,
        big_zone_names=2_000,
        reload_load_seconds=4,
        big_db=False,  # the 100 MB database is used only when a full run already built it
        index_wait_s=120,
    ),
}


@dataclass(frozen=True)
class Paths:
    """Where things go: `out` for configs, logs, query files and results (inside bench/, ignored
    by git); `cache` for databases (outside the repository: never committed, shared by runs)."""

    out: Path
    cache: Path

    @property
    def logs(self) -> Path:
        return self.out / "logs"

    def create(self) -> None:
        for path in (self.out, self.logs, self.cache):
            path.mkdir(parents=True, exist_ok=True)


def default_cache() -> Path:
    """$GEODNS_BENCH_CACHE, else $XDG_CACHE_HOME/geodns-bench, else ~/.cache/geodns-bench."""
    if os.environ.get("GEODNS_BENCH_CACHE"):
        return Path(os.environ["GEODNS_BENCH_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "geodns-bench"


def log(message: str) -> None:
    print(message, flush=True)
