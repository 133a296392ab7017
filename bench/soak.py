"""Soak: many clients mixing good calls, bad inputs, cancellations and short deadlines against a
``featurizer serve`` subprocess for a while; prints requests, codes, p99 and the server's RSS.

    make soak                      # 64 clients, 60 s (SOAK_SECONDS=600 make soak for longer)
    python bench/soak.py --seconds 60 --clients 64

Every call has an expected set of codes: good calls OK (DEADLINE_EXCEEDED/CANCELLED only when the
client chose a short deadline or cancelled), bad inputs exactly their documented code from
tests/support/bad_inputs.py. Anything else is counted as a failure; the exit status is 1 then.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
import psutil
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from featurizer_client.v1 import featurizer_pb2 as pb  # noqa: E402

from tests.support.bad_inputs import SERVER_SETTINGS, corpus, publish_corpus_registry  # noqa: E402
from tests.support.images import encode, photos  # noqa: E402
from tests.support.servers import LISTENING  # noqa: E402

RESPONSES = {"Embed": pb.EmbedResponse, "Predict": pb.PredictResponse, "GetModel": pb.ModelInfo}
OK, CANCELLED, DEADLINE = grpc.StatusCode.OK, grpc.StatusCode.CANCELLED, grpc.StatusCode.DEADLINE_EXCEEDED
MIX = (("embed", 0.40), ("predict", 0.25), ("bad", 0.15), ("cancel", 0.10), ("deadline", 0.10))


@dataclass
class Tally:
    """What every client saw; one lock, appended from the client threads."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    codes: Counter = field(default_factory=Counter)
    by_kind: Counter = field(default_factory=Counter)
    failures: Counter = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)
    examples: dict[str, str] = field(default_factory=dict)
    server: dict[str, float] = field(default_factory=dict)
    rss: list[int] = field(default_factory=list)          # the server's RSS, once a second

    def record(self, kind: str, code: grpc.StatusCode, expected: set, seconds: float, details: str) -> None:
        with self.lock:
            self.codes[code.name] += 1
            self.by_kind[kind] += 1
            if code == OK and kind in ("embed", "predict"):
                self.latencies.append(seconds)
            if code not in expected:
                key = f"{kind}: {code.name}"
                self.failures[key] += 1
                self.examples.setdefault(key, details[:200])


def good_payloads(rng: np.random.Generator) -> list[bytes]:
    """Real photos at several sizes (32 to 640 px on the long side), as JPEG or PNG."""
    out = []
    for array in photos().values():
        for size in (32, 96, 224, 640):
            h, w = array.shape[:2]
            scale = size / max(h, w)
            small = Image.fromarray(array).resize((max(1, round(w * scale)), max(1, round(h * scale))))
            out.append(encode(np.asarray(small), str(rng.choice(["JPEG", "PNG"]))))
    return out


def client(index: int, channel: grpc.Channel, until: float, tally: Tally, payloads: list[bytes], bad: list) -> None:
    rng = random.Random(index)
    stubs = {m: channel.unary_unary(f"/featurizer.v1.Featurizer/{m}", request_serializer=lambda b: b,
                                    response_deserializer=RESPONSES[m].FromString) for m in RESPONSES}
    kinds, weights = zip(*MIX, strict=True)
    while time.monotonic() < until:
        kind = rng.choices(kinds, weights)[0]
        image = pb.Image(encoded=rng.choice(payloads))
        timeout, expected = 120.0, {OK}
        if kind == "bad":
            case = rng.choice(bad)
            method, request, expected = case.method, case.request, {case.code}
        elif kind == "predict":
            method, request = "Predict", pb.PredictRequest(model="largenet", images=[image]).SerializeToString()
        else:
            images = [image] * rng.choice((1, 1, 2, 4))
            method, request = "Embed", pb.EmbedRequest(model="alexnet", images=images).SerializeToString()
        if kind == "deadline":
            timeout, expected = rng.uniform(0.01, 3.0), {OK, DEADLINE}
        started = time.perf_counter()
        future = stubs[method].future(request, timeout=timeout)
        if kind == "cancel":
            expected = {OK, CANCELLED}
            time.sleep(rng.uniform(0, 0.2))  # a caller that leaves at a random point
            future.cancel()
        try:
            future.result()
            code, details = OK, ""
        except grpc.FutureCancelledError:
            code, details = CANCELLED, "cancelled by the client"
        except grpc.RpcError as error:
            code, details = error.code(), error.details() or ""
        tally.record(kind, code, expected, time.perf_counter() - started, details)


def start_server(registry: Path, log: Path) -> tuple[subprocess.Popen, str, str]:
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in SERVER_SETTINGS.items()]
    proc = subprocess.Popen([sys.executable, "-m", "featurizer", "serve", "--registry", str(registry), "--host",
                             "127.0.0.1", "--port", "0", "--metrics-port", "0", "--log-level", "warning", *flags],
                            stdout=subprocess.PIPE, stderr=open(log, "w"), text=True)
    for line in proc.stdout:  # blocks until the server prints its address (or exits)
        match = LISTENING.search(line)
        if match:
            threading.Thread(target=proc.stdout.read, daemon=True).start()  # keep draining
            return proc, f"127.0.0.1:{match.group(2)}", f"http://127.0.0.1:{match.group(3)}/metrics"
    raise SystemExit(f"featurizer serve exited with {proc.wait()}: {log.read_text()[-2000:]}")


def server_figures(url: str) -> dict[str, float]:
    """Queue depth left over and images dropped, from the server's own /metrics."""
    text = urllib.request.urlopen(url, timeout=30).read().decode()
    out: Counter = Counter()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "featurizer_queue_depth":
                out["queue depth"] += sample.value
            elif sample.name == "featurizer_dropped_total":
                out[f"dropped ({sample.labels['reason']})"] += sample.value
    return dict(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=float(os.environ.get("SOAK_SECONDS", 60)))
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--channels", type=int, default=8, help="gRPC channels the clients share")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="featurizer-soak-"))
    print(f"building the registry in {work} ...", flush=True)
    publish_corpus_registry(work / "registry")
    bad = [c for c in corpus() if c.code != OK]
    payloads = good_payloads(np.random.default_rng(0))
    proc, target, metrics_url = start_server(work / "registry", work / "server.log")
    server = psutil.Process(proc.pid)
    channels = [grpc.insecure_channel(target, options=[("grpc.max_send_message_length", 64 << 20)])
                for _ in range(args.channels)]
    try:
        rss_start = server.memory_info().rss
        tally = Tally()
        print(f"soak: {args.clients} clients for {args.seconds:.0f} s against {target} "
              f"(server RSS {rss_start / 2**20:.0f} MiB)", flush=True)
        until = time.monotonic() + args.seconds
        threads = [threading.Thread(target=client, args=(i, channels[i % len(channels)], until, tally, payloads, bad),
                                    daemon=True) for i in range(args.clients)]
        started = time.monotonic()
        for t in threads:
            t.start()
        while any(t.is_alive() for t in threads):  # sample the server's memory once a second
            tally.rss.append(server.memory_info().rss)
            time.sleep(1.0)
        elapsed = time.monotonic() - started
        rss_end = server.memory_info().rss
        tally.server = server_figures(metrics_url)
        alive = proc.poll() is None
    finally:
        for channel in channels:
            channel.close()
        proc.terminate()
        proc.wait(60)
    report(tally, elapsed, rss_start, rss_end, alive, work / "server.log")
    shutil.rmtree(work, ignore_errors=True)
    return 0 if not tally.failures and alive else 1


def report(tally: Tally, elapsed: float, rss_start: int, rss_end: int, alive: bool, log: Path) -> None:
    total = sum(tally.codes.values())
    lat = np.array(tally.latencies) * 1000
    print(f"requests: {total} in {elapsed:.1f} s ({total / elapsed:.1f}/s)")
    print("by kind:  " + ", ".join(f"{k} {v}" for k, v in sorted(tally.by_kind.items())))
    print("by code:  " + ", ".join(f"{k} {v}" for k, v in tally.codes.most_common()))
    if len(lat):
        print(f"good calls: {len(lat)} OK, latency p50 {np.percentile(lat, 50):.0f} ms, "
              f"p99 {np.percentile(lat, 99):.0f} ms, max {lat.max():.0f} ms")
    quarters = [tally.rss[min(len(tally.rss) - 1, len(tally.rss) * q // 4)] for q in (1, 2, 3)] if tally.rss else []
    print(f"server RSS: start {rss_start / 2**20:.0f} MiB, at 1/4 1/2 3/4 of the run "
          f"{' '.join(f'{r / 2**20:.0f}' for r in quarters)} MiB, end {rss_end / 2**20:.0f} MiB, "
          f"peak {max(tally.rss + [rss_end]) / 2**20:.0f} MiB")
    print(f"server alive at the end: {alive}; INTERNAL/UNKNOWN: "
          f"{tally.codes['INTERNAL'] + tally.codes['UNKNOWN']}; tracebacks in the server log: "
          f"{len(re.findall('Traceback', log.read_text(errors='replace')))}")
    print("server metrics after the run: " + ", ".join(f"{k} {v:g}" for k, v in tally.server.items()))
    print(f"unexpected outcomes: {sum(tally.failures.values())}")
    for key, count in tally.failures.most_common():
        print(f"  {count:6d}  {key}  e.g. {tally.examples[key]!r}")


if __name__ == "__main__":
    sys.exit(main())
