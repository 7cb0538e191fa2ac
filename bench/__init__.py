"""The benchmark of geodns against gdnsd (docs/benchmark.md); `python bench/run.py` runs it.

One module per job: `common` (settings and paths), `dnswire` (queries and replies as bytes),
`databases` (synthetic and real City databases), `popsets` (the 6- and 100-PoP site sets),
`workloads` (client subnets and dnsperf input files), `servers` (configs and processes of both
servers), `procstat` (CPU and memory from /proc), `loadgen` (dnsperf runs with CPU accounting),
`answers` (asking both servers, comparing their answers), `resolver_cache` (ECS scope and the
blocks a resolver's cache needs), `scenarios` (the measurements), `report` (JSON and table).
"""
