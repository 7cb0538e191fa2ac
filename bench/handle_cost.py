"""In-process CPU cost of the query handler with counting on, per path: what counting costs.

    python bench/handle_cost.py [CHECKOUT ...] [--rounds N]

For each checkout (default: this one), in turn and N times over, times `answer()` of that
checkout's geodns (process CPU time, garbage collector paused) on the bundled example zone and
database, with the metrics counters as the observer (`ServerState.count_with`), as `geodns
serve` runs it:

  cached     300,000 repeats of 1,000 distinct ECS queries: every one a reply-cache hit
  template   100,000 ECS queries from distinct /24s of three places: subnet-template hits
  full       100,000 static queries over TCP: parser, engine and observer every time

Give two checkouts (e.g. a `git worktree` of main and this branch) to compare them on the same
machine at the same time; the best of the rounds is the figure least disturbed by other load.
"""

from __future__ import annotations

import argparse
import ast
import gc
import random
import subprocess
import sys
import time
from pathlib import Path

NAMES = ("www", "img", "api", "mx1", "upload")


def measure(root: Path, rounds: int) -> dict[str, list[float]]:
    sys.path.insert(0, str(root))
    import dns.edns
    import dns.message

    from geodns.config.loader import load_geo
    from geodns.config.server import load_config
    from geodns.observe.metrics import Metrics
    from geodns.serving.answer_path import ServerState, answer
    from geodns.serving.client import ClientFactory
    from geodns.serving.snapshot import build_snapshot

    config = load_config(root / "geodns" / "data" / "example-config.yaml")
    geo = load_geo(config, build=True)
    resolver = ClientFactory(()).from_text("192.0.2.1")

    def handle(state: ServerState, data: bytes, tcp: bool) -> bytes | None:
        return answer(state, data, resolver, tcp, 0.0)

    def wire(name: str, ecs: str | None = None, query_id: int = 1) -> bytes:
        options = [dns.edns.ECSOption.from_text(ecs)] if ecs else None
        message = dns.message.make_query(name, "A", use_edns=0, options=options)
        message.id = query_id
        return message.to_wire()

    rng = random.Random(7)
    warm = [
        wire(f"{name}.cdn.example.com", f"{rng.randrange(1, 223)}.{rng.randrange(256)}.0.0/24")
        for name in NAMES
        for _ in range(200)
    ]
    static = [wire("mx1.cdn.example.com", query_id=i) for i in range(1000)]

    def run(kind: str) -> float:
        state = ServerState(build_snapshot(config, geo))
        metrics = Metrics(server_state=state, process=False)
        state.count_with(metrics.counters)
        tcp = False
        if kind == "cached":
            for data in warm + warm:  # seen twice: kept in the reply cache
                handle(state, data, False)
            workload = warm * 300
        elif kind == "template":
            workload = [
                wire(
                    f"{NAMES[i % 5]}.cdn.example.com", f"{36 + i % 3}.{i >> 8 & 255}.{i & 255}.0/24"
                )
                for i in range(105_000)
            ]
            for data in workload[:5_000]:  # templates learned, places decided
                handle(state, data, False)
            workload = workload[5_000:]
        else:
            workload = static * 100
            tcp = True
        gc.collect()
        gc.disable()
        started = time.process_time()
        for data in workload:
            handle(state, data, tcp)
        spent = time.process_time() - started
        gc.enable()
        return spent / len(workload) * 1e6

    return {kind: [run(kind) for _ in range(rounds)] for kind in ("cached", "template", "full")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkouts", nargs="*", type=Path)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--one", type=Path, help=argparse.SUPPRESS)  # a child's single checkout
    args = parser.parse_args()
    if args.one is not None:
        results = measure(args.one.resolve(), args.rounds)
        print(repr(results))
        return
    checkouts = args.checkouts or [Path(__file__).resolve().parents[1]]
    best: dict[Path, dict[str, float]] = {}
    for _ in range(args.rounds):  # interleaved: each checkout in a fresh process, in turn
        for checkout in checkouts:
            output = subprocess.run(
                [sys.executable, __file__, "--one", str(checkout), "--rounds", "1"],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            for kind, values in ast.literal_eval(output.strip().splitlines()[-1]).items():
                best.setdefault(checkout, {})[kind] = min(
                    best.get(checkout, {}).get(kind, float("inf")), *values
                )
    for checkout, figures in best.items():
        text = ", ".join(f"{kind} {value:.3f} us" for kind, value in figures.items())
        print(f"{checkout}: best of {args.rounds}: {text}")


if __name__ == "__main__":
    main()
