"""Everything the GPU path needs checked on a GPU machine, in one run, into one folder.

Stages (each records its figures, or why it did not run, and never stops the others):
``env`` (versions, GPUs), ``tests`` (integration tests with the servers they start on the device),
``embeddings`` (served rows vs the CPU fp32 reference, per precision and decode device),
``limit`` (bench/gpu_limit.py: in-process ceiling and CPU vs GPU decode rates), ``serve``
(``featurizer serve`` under bench/loadgen.py at 1/32/256 callers and 64-image requests, with
nvidia-smi sampled during each load and the device-memory gauge read after it).
Writes ``report.json`` and ``report.md`` (bench/gpu_report.py) plus ``logs/``. With ``--device cpu``
the same layout comes out, GPU-only fields saying "not run: no CUDA". docs/gpu.md says how to run it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
from procs import Child, ChildFailed, run_to_json, stop_all  # noqa: E402
from gpu_report import write_report  # noqa: E402

NO_CUDA = "not run: no CUDA"
# Tolerances of served rows against the CPU fp32 reference (relative: max |a-b| / max |ref|).
# fp32 on CUDA: cuDNN's kernels (TF32 allowed for convolutions) and nvJPEG's IDCT both differ a little.
TOLERANCE = {"fp32": 1e-2, "bf16": 5e-2, "fp16": 2e-2}
MIN_COSINE = {"fp32": 0.9999, "bf16": 0.999, "fp16": 0.9995}
GPU_TESTS = ["tests/integration/test_foundation.py", "tests/integration/test_batching.py",
             "tests/integration/test_api_predict.py", "tests/integration/test_bad_inputs.py"]
QUICK_TESTS = ["tests/integration/test_foundation.py::test_embeddings_of_real_photos_equal_torchvision"]


def write_payloads(folder: Path) -> dict[str, Path]:
    """Real photos (scikit-image's) as JPEGs: as shipped, 224-class and 12-megapixel (4032x3024)."""
    import skimage.data
    from PIL import Image

    sets = {name: folder / name for name in ("photos", "p224", "mp12")}
    for path in sets.values():
        path.mkdir(parents=True, exist_ok=True)
    for name in ("chelsea", "coffee", "astronaut", "rocket"):
        image = Image.fromarray(getattr(skimage.data, name)()).convert("RGB")
        image.save(sets["photos"] / f"{name}.jpg", quality=90)
        small = image.resize((round(224 * image.width / image.height), 224), Image.Resampling.LANCZOS)
        small.save(sets["p224"] / f"{name}.jpg", quality=90)
        image.resize((4032, 3024), Image.Resampling.BICUBIC).save(sets["mp12"] / f"{name}.jpg", quality=90)
    return sets


def run_stage(report: dict, name: str, work) -> None:
    started = time.monotonic()
    try:
        report[name] = work()
    except Exception as error:  # one failed stage is a finding, not the end of the run
        report[name] = {"error": f"{type(error).__name__}: {error}"[:4000]}
    report.setdefault("stage_seconds", {})[name] = round(time.monotonic() - started, 1)


def env_stage(cuda: bool) -> dict:
    import torch
    import torchvision

    smi = shutil.which("nvidia-smi")
    gpus = subprocess.run([smi, "-L"], capture_output=True, text=True).stdout.strip() if smi else "nvidia-smi absent"
    return {"python": platform.python_version(), "torch": torch.__version__, "torchvision": torchvision.__version__,
            "cuda_available": torch.cuda.is_available(), "device_requested": "cuda" if cuda else "cpu",
            "gpus": gpus, "cpu_count": os.cpu_count(), "host": platform.node()}


def tests_stage(device: str, tests: list[str], logs: Path, timeout: float) -> dict:
    env = {**os.environ, "FEATURIZER_TEST_DEVICE": device, "PYTHONUNBUFFERED": "1"}
    argv = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=", *tests]
    with open(logs / "tests.log", "w") as log:
        done = subprocess.run(argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=timeout)
    tail = (logs / "tests.log").read_text(errors="replace").strip().splitlines()[-1:]
    return {"device": device, "tests": tests, "exit_code": done.returncode, "summary": tail[0] if tail else ""}


class Server:
    """``featurizer serve`` as a child, on ephemeral ports, logging to ``logs/``."""

    def __init__(self, name: str, registry: Path, logs: Path, *flags: str) -> None:
        argv = [sys.executable, "-m", "featurizer", "serve", "--registry", str(registry), "--host", "127.0.0.1",
                "--port", "0", "--metrics-port", "0", "--log-format", "text", "--log-level", "warning", *flags]
        self.child = Child(name, argv, logs)
        match = self.child.wait_for_line(r"featurizer listening on [\d.]+:(\d+) \(metrics on :(\d+)\)", 300)
        self.target = f"127.0.0.1:{match.group(1)}"
        self.metrics_port = int(match.group(2))

    def device_memory_bytes(self) -> float:
        text = urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10).read().decode()
        values = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                  if line.startswith("featurizer_device_memory_bytes")]
        return max(values) if values else 0.0

    def stop(self) -> None:
        self.child.stop()


def embeddings_stage(registry: Path, photos: Path, logs: Path, cuda: bool) -> dict:
    """Served rows vs CPU fp32 rows computed in this process (bench/reference_path.py)."""
    from featurizer_client import FeaturizerClient
    from payloads import read_payloads
    from reference_path import forward, load_features, preprocess

    data = read_payloads(photos)
    reference = forward(load_features(True), [preprocess(d) for d in data]).numpy()
    rows = []
    for precision in ("fp32", "fp16", "bf16"):
        for decode in ("cpu", "cuda"):
            if not cuda and (precision == "fp16" or decode == "cuda"):
                rows.append({"precision": precision, "decode": decode, "result": NO_CUDA})
                continue
            server = Server(f"embed-{precision}-{decode}", registry, logs, "--device", "cuda" if cuda else "cpu",
                            "--precision", precision, "--decode-device", decode)
            try:
                with FeaturizerClient(server.target) as client:
                    served = client.embed(data, model="alexnet")
            finally:
                server.stop()
            rel = float(np.abs(served - reference).max() / np.abs(reference).max())
            cos = (served * reference).sum(1) / (np.linalg.norm(served, axis=1) * np.linalg.norm(reference, axis=1))
            ok = rel <= TOLERANCE[precision] and float(cos.min()) >= MIN_COSINE[precision]
            rows.append({"precision": precision, "decode": decode, "max_rel_diff": rel, "min_cosine": float(cos.min()),
                         "tolerance_rel": TOLERANCE[precision], "min_cosine_required": MIN_COSINE[precision], "ok": ok})
    return {"images": len(data), "rows": rows}


def limit_stage(sets: dict[str, Path], logs: Path, cuda: bool, seconds: float, batches: str) -> dict:
    argv = [sys.executable, str(HERE / "gpu_limit.py"), "--payloads", str(sets["photos"]), "--device",
            "cuda" if cuda else "cpu", "--seconds", str(seconds), "--batches", batches,
            "--decode-payloads", str(sets["p224"]), str(sets["mp12"])]
    return json.loads(run_to_json("limit", argv, logs, timeout=1200))


class SmiSampler:
    """nvidia-smi utilisation and memory, sampled every 200 ms on a thread during one load."""

    def __init__(self) -> None:
        self.smi = shutil.which("nvidia-smi")
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "SmiSampler":
        if self.smi:
            self._thread.start()
        return self

    def _run(self) -> None:
        argv = [self.smi, "--query-gpu=utilization.gpu,memory.used", "--format=csv,noheader,nounits"]
        while not self._stop.wait(0.2):
            out = subprocess.run(argv, capture_output=True, text=True).stdout.strip().splitlines()
            if out:
                util, mem = (float(v) for v in out[0].split(",")[:2])
                self.samples.append((util, mem))

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self.smi:
            self._thread.join(5)

    def summary(self) -> dict | str:
        if not self.smi:
            return "not run: nvidia-smi absent"
        if not self.samples:
            return "no samples"
        util = [u for u, _ in self.samples]
        return {"samples": len(util), "util_mean_pct": float(np.mean(util)), "util_max_pct": float(max(util)),
                "memory_used_max_mib": float(max(m for _, m in self.samples))}


def serve_stage(registry: Path, photos: Path, logs: Path, cuda: bool, callers: list[int], batch_request: int,
                batch_callers: int, warmup: float, seconds: float) -> dict:
    runs = []
    for decode in ("cpu", "cuda"):
        if decode == "cuda" and not cuda:
            runs.append({"decode": decode, "result": NO_CUDA})
            continue
        server = Server(f"serve-{decode}", registry, logs, "--device", "cuda" if cuda else "cpu",
                        "--decode-device", decode, "--preprocess-workers", str(16 if cuda else 2),
                        *(["--precision", "fp16"] if cuda else []))
        loads = [(n, 1) for n in callers] + [(batch_callers, batch_request)]
        try:
            for concurrency, batch in loads:
                argv = [sys.executable, str(HERE / "loadgen.py"), "--target", server.target, "--payloads", str(photos),
                        "--concurrency", str(concurrency), "--batch", str(batch), "--warmup", str(warmup),
                        "--seconds", str(seconds)]
                with SmiSampler() as smi:
                    result = json.loads(run_to_json(f"load-{decode}-c{concurrency}-b{batch}", argv, logs,
                                                    timeout=warmup + seconds + 300))
                result["nvidia_smi"] = smi.summary()
                result["device_memory_bytes"] = server.device_memory_bytes() if cuda else NO_CUDA
                runs.append({"decode": decode, **result})
        finally:
            server.stop()
    return {"precision": "fp16" if cuda else "fp32", "runs": runs}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out", nargs="?", type=Path, default=Path(os.environ.get("OUT") or HERE / "results" / "gpu"))
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--quick", action="store_true", help="a few seconds per stage (smoke)")
    parser.add_argument("--skip", default="", help="comma-separated stages to leave out (tests, embeddings, ...)")
    args = parser.parse_args(argv)
    cuda = args.device == "cuda"
    out: Path = args.out
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    quick = args.quick
    seconds, warmup = (1.0, 0.5) if quick else (8.0, 2.0)
    callers = [1, 4] if quick else [1, 32, 256]
    skip = set(filter(None, args.skip.split(",")))
    report: dict = {"device": args.device, "quick": quick, "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    "settings": {"seconds": seconds, "warmup": warmup, "callers": callers,
                                 "batch_request": 8 if quick else 64, "tolerance_rel": TOLERANCE,
                                 "min_cosine": MIN_COSINE}}
    from demo_registry import build_registry

    registry = build_registry(out / "registry")
    sets = write_payloads(out / "payloads")
    stages = {
        "env": lambda: env_stage(cuda),
        "tests": lambda: tests_stage(args.device, QUICK_TESTS if quick else GPU_TESTS, logs, 1800),
        "embeddings": lambda: embeddings_stage(registry, sets["photos"], logs, cuda),
        "limit": lambda: limit_stage(sets, logs, cuda, 0.5 if quick else 3.0, "1,8" if quick else "1,32,64,128,256"),
        "serve": lambda: serve_stage(registry, sets["photos"], logs, cuda, callers, 8 if quick else 64,
                                     1 if quick else 4, warmup, seconds),
    }
    try:
        for name, work in stages.items():
            if name in skip:
                report[name] = {"result": "not run: skipped"}
                continue
            print(f"gpu_check: {name}", flush=True)
            run_stage(report, name, work)
            write_report(out, report)  # after every stage: a run killed at its limit keeps what it had
    except ChildFailed as error:
        report["error"] = str(error)[:4000]
    finally:
        stop_all()
    write_report(out, report)
    print(f"gpu_check: report in {out / 'report.md'}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
