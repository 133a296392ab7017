"""featurizer against the machine's limit, a naive server and real peers, in one run.

Systems run one after another in interleaved rounds (limit, featurizer, the same featurizer over
the Open Inference Protocol through tritonclient as v2-grpc and v2-http, naive, peers, echo; then
again), because this machine's speed drifts within a run: ratios are taken inside a round and
reported as the median and range over rounds. Each round also has a photos part (``photos.py``):
the limit and featurizer on phone-size photos, exact and fast decode, and a 50%-repeat workload on
featurizer with its response cache off and on. Every server is a subprocess started and stopped
here; every load generator is a separate process. Writes bench/results/<timestamp>.json and
docs/performance.md (+ PNGs).

    python bench/run.py            # full: 3 rounds, 6 s per load, 10-minute memory check (~27 minutes)
    python bench/run.py --quick    # 1 round, a couple of seconds per load (smoke)
"""

from __future__ import annotations

import argparse
import functools
import json
import shlex
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import photos  # noqa: E402
import report  # noqa: E402
import systems  # noqa: E402
from demo_registry import build_registry  # noqa: E402
from memory import memory_check  # noqa: E402
from payloads import describe, write_payloads  # noqa: E402
from procs import ChildFailed, run_to_json, stop_all  # noqa: E402
from rss import RssSampler  # noqa: E402

ALL_SYSTEMS = ("limit", "featurizer", "v2-grpc", "v2-http", "naive", "litserve", "pytriton", "echo")
PYTRITON_REASON = (BENCH / "peers" / "PYTRITON.md")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1 round, short loads: a smoke run")
    parser.add_argument("--rounds", type=int, help="interleaved rounds (default 3; 1 with --quick)")
    parser.add_argument("--seconds", type=float, help="measured seconds per load (default 6; 2 with --quick)")
    parser.add_argument("--warmup", type=float, help="unmeasured seconds before each load (default 2; 0.5 with --quick)")
    parser.add_argument("--systems", default=",".join(ALL_SYSTEMS), help="comma-separated subset of " + ",".join(ALL_SYSTEMS))
    parser.add_argument("--concurrency", default="1,8,32,64", help="closed-loop single-image callers")
    parser.add_argument("--batch", type=int, default=64, help="images per request of the one batch client (0 = none)")
    parser.add_argument("--largenet-concurrency", type=int, default=64, help="callers of the LargeNet load (0 = none)")
    parser.add_argument("--phone-concurrency", type=int, default=32,
                        help="callers of featurizer's phone-photo loads and the phone limit's batch size (0 = none)")
    parser.add_argument("--repeat-fraction", type=float, default=0.5,
                        help="share of repeated requests in the response-cache workload (0 = none)")
    parser.add_argument("--memory-minutes", type=float, help="memory check length (default 10; 0 = off, 0 with --quick)")
    parser.add_argument("--max-minutes", type=float, default=30.0,
                        help="time budget: stages that would start after it are skipped (recorded as such), and the "
                             "memory check is shortened to fit")
    parser.add_argument("--results-dir", type=Path, help="where <timestamp>.json goes (default bench/results; "
                        "bench/results/quick with --quick)")
    parser.add_argument("--log-dir", type=Path, help="keep every child's log here (default: a temporary folder)")
    parser.add_argument("--docs-dir", type=Path, help="where performance.md and its PNGs go (default docs/; "
                        "bench/results/quick with --quick, so a smoke run never replaces the committed report)")
    args = parser.parse_args(argv)
    quick = args.quick
    args.rounds = args.rounds or (1 if quick else 3)
    args.seconds = args.seconds or (2.0 if quick else 6.0)
    args.warmup = args.warmup if args.warmup is not None else (0.5 if quick else 2.0)
    args.memory_minutes = args.memory_minutes if args.memory_minutes is not None else (0.0 if quick else 10.0)
    args.results_dir = args.results_dir or BENCH / "results" / ("quick" if quick else "")
    args.docs_dir = args.docs_dir or (BENCH / "results" / "quick" if quick else BENCH.parent / "docs")
    args.systems = [s for s in args.systems.split(",") if s]
    unknown = set(args.systems) - set(ALL_SYSTEMS)
    if unknown:
        parser.error(f"--systems: unknown {sorted(unknown)}; expected some of {', '.join(ALL_SYSTEMS)}")
    args.concurrency = [int(c) for c in args.concurrency.split(",") if c]
    if not 0.0 <= args.repeat_fraction <= 1.0:
        parser.error(f"--repeat-fraction must be in [0, 1], got {args.repeat_fraction}")
    return args


def round_systems(args: argparse.Namespace) -> list[str]:
    """What one round runs: ``--systems`` in order, the phone limit after the limit and the cached
    featurizer after featurizer (the photos part)."""
    out = []
    for name in args.systems:
        out.append(name)
        if name == "limit" and args.phone_concurrency:
            out.append(photos.PHONE_LIMIT)
        if name == "featurizer" and args.repeat_fraction:
            out.append(systems.CACHED)
    return out


def loads_for(name: str, args: argparse.Namespace) -> list[dict]:
    """The loads one system gets: AlexNet single-image callers and a batch client; LargeNet for
    featurizer and the echo server; the photos part's loads for featurizer (cache off) and the
    cached featurizer (the repeat load alone)."""
    if name == systems.CACHED:
        return photos.repeat_loads(args.repeat_fraction)
    alexnet = [] if name == "echo" else (
        [{"label": f"c{c}", "rpc": "embed", "model": "alexnet", "payloads": "full", "concurrency": c, "batch": 1}
         for c in args.concurrency]
        + ([{"label": f"b{args.batch}", "rpc": "embed", "model": "alexnet", "payloads": "full", "concurrency": 1,
             "batch": args.batch}] if args.batch else []))
    largenet = ([{"label": f"largenet_c{args.largenet_concurrency}", "rpc": "predict", "model": "largenet",
                  "payloads": "small", "concurrency": args.largenet_concurrency, "batch": 1}]
                if args.largenet_concurrency and name in ("featurizer", "echo") else [])
    photo = photos.phone_loads(args.phone_concurrency) + photos.repeat_loads(args.repeat_fraction)
    return alexnet + largenet + (photo if name == "featurizer" else [])


def limit_seconds(args: argparse.Namespace) -> float:
    return max(0.5, args.seconds * 0.4)  # per configuration: 16 of them in full mode, 4 with --quick


def estimate_minutes(args: argparse.Namespace) -> float:
    """A rough upper estimate on a quiet 2-core machine, printed before a long run starts."""
    per_load = args.warmup + args.seconds + 1.5       # + load generator start-up
    startup = 15.0                                    # a server: imports, weights, warm-up
    seconds = 0.0
    for name in round_systems(args):
        if name == "limit":
            seconds += (4 if args.quick else 16) * (limit_seconds(args) + 1.5) + 10
        elif name == photos.PHONE_LIMIT:
            seconds += photos.limit_estimate_s(args.phone_concurrency, limit_seconds(args), args.quick)
        elif name != "pytriton":
            seconds += startup + sum(per_load + photos.tail_s(load) for load in loads_for(name, args))
    return (seconds * args.rounds + 30 + (args.memory_minutes * 60 + 30 if "featurizer" in args.systems else 0)) / 60


def run_limit(ctx: systems.Context, args: argparse.Namespace, round_index: int) -> dict:
    per_config = limit_seconds(args)
    argv = [sys.executable, str(BENCH / "limit.py"), "--payloads", str(ctx.payloads["full"]), "--seconds", str(per_config)]
    if args.quick:
        argv += ["--batches", "1,8", "--formats", "channels_last"]
    return json.loads(run_to_json(f"limit-r{round_index}", argv, ctx.log_dir, timeout=600))


def run_server(name: str, ctx: systems.Context, args: argparse.Namespace, round_index: int) -> dict:
    started = time.monotonic()
    running = systems.start(name, ctx, round_index)
    result: dict = {"startup_s": time.monotonic() - started, "pid": running.child.proc.pid, "loads": {}}
    try:
        with RssSampler(running.child) as sampler:
            for load in loads_for(name, args):
                result["loads"][load["label"]] = run_load(running, load, ctx, args, round_index)
        result["peak_rss_bytes"] = sampler.peak
    finally:
        running.stop()
    return result


def load_generator(running: systems.Running, load: dict) -> list[str]:
    """featurizer.v1 and LitServe: loadgen.py here; the Open Inference Protocol: tritonclient's
    own venv running triton_load.py (its protobuf pin keeps it out of this one)."""
    if running.protocol in (systems.Protocol.V2_GRPC, systems.Protocol.V2_HTTP):
        transport = "grpc" if running.protocol is systems.Protocol.V2_GRPC else "http"
        if load["rpc"] != "embed":
            raise ValueError(f"the v2 rows load embeddings only, not {load['rpc']!r}")
        return [str(triton_python()), str(BENCH / "triton_load.py"), "--url", running.target, "--protocol", transport]
    return [sys.executable, str(BENCH / "loadgen.py"), "--target", running.target, "--protocol", running.protocol,
            "--rpc", load["rpc"]]


@functools.cache
def triton_python() -> Path:
    """tritonclient's venv, ``.venv-triton``: built once (minutes) by the tests' helper, then reused."""
    sys.path.insert(0, str(BENCH.parent))
    from tests.support.triton import triton_python as build

    return build()


def run_load(running: systems.Running, load: dict, ctx: systems.Context, args: argparse.Namespace,
             round_index: int) -> dict:
    argv = [*load_generator(running, load), "--model", load["model"],
            "--payloads", str(ctx.payloads[load["payloads"]]),
            "--concurrency", str(load["concurrency"]), "--batch", str(load["batch"]),
            "--warmup", str(args.warmup), "--seconds", str(args.seconds)]
    if load.get("repeat_fraction"):
        argv += ["--repeat-fraction", str(load["repeat_fraction"])]
    timeout = args.warmup + args.seconds + 120
    try:
        return json.loads(run_to_json(f"load-{running.name}-{load['label']}-r{round_index}", argv, ctx.log_dir, timeout))
    except ChildFailed as error:
        return {"failed": str(error)[-1000:]}


def run_system(name: str, ctx: systems.Context, args: argparse.Namespace, round_index: int) -> dict:
    print(f"[round {round_index + 1}/{args.rounds}] {name} ...", flush=True)
    try:
        if name == "pytriton":
            result = {"skipped": PYTRITON_REASON.read_text().strip()}
        elif name == "limit":
            result = run_limit(ctx, args, round_index)
        elif name == photos.PHONE_LIMIT:
            result = photos.run_limit(ctx, args.phone_concurrency, limit_seconds(args), args.quick, round_index)
        else:
            result = run_server(name, ctx, args, round_index)
    except ChildFailed as error:
        result = {"failed": str(error)[-2000:]}
    print(f"[round {round_index + 1}/{args.rounds}] {name}: {report.one_line(name, result)}", flush=True)
    return result


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = "python bench/run.py " + " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    began = time.time()
    print(f"bench: {len(args.systems)} systems x {args.rounds} round(s), about {estimate_minutes(args):.0f} min", flush=True)
    with tempfile.TemporaryDirectory(prefix="featurizer-bench-") as tmp:
        work = Path(tmp)
        log_dir = args.log_dir or work / "logs"
        log_dir.mkdir(parents=True, exist_ok=True)
        payloads = write_payloads(work / "payloads")
        ctx = systems.Context(registry=build_registry(work / "registry"), payloads=payloads, log_dir=log_dir)
        results: dict = {"command": command, "machine": report.machine(), "started_unix": began,
                         "config": {"quick": args.quick, "rounds": args.rounds, "seconds": args.seconds,
                                    "warmup": args.warmup, "systems": args.systems, "concurrency": args.concurrency,
                                    "batch": args.batch, "largenet_concurrency": args.largenet_concurrency,
                                    "phone_concurrency": args.phone_concurrency,
                                    "repeat_fraction": args.repeat_fraction, "memory_minutes": args.memory_minutes},
                         "payloads": {kind: describe(folder) for kind, folder in payloads.items()}, "rounds": []}
        if set(args.systems) & set(systems.V2_SYSTEMS):  # before the rounds: a first build takes minutes
            print(f"tritonclient: {triton_python()}", flush=True)
        deadline = began + args.max_minutes * 60
        try:
            for r in range(args.rounds):
                results["rounds"].append({name: run_system(name, ctx, args, r) if time.time() < deadline
                                          else {"skipped": f"over the --max-minutes {args.max_minutes:g} budget"}
                                          for name in round_systems(args)})
            minutes = min(args.memory_minutes, (deadline - time.time()) / 60 - 1)  # 1 min: start-up and report
            if args.memory_minutes > 0 and "featurizer" in args.systems and minutes >= 1:
                print(f"memory check: {minutes:.1f} min of 64 callers ...", flush=True)
                results["memory"] = memory_check(ctx, minutes)
        finally:
            stop_all()
        results["duration_s"] = time.time() - began
        results["summary"] = report.summarize(results)
        json_path, md_path = report.write(results, args.results_dir, args.docs_dir)
    print(report.summary_text(results["summary"]))
    print(f"wrote {json_path} and {md_path} in {results['duration_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
