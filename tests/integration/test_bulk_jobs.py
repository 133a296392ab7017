"""Bulk jobs on a real photo folder: one bad file costs one row, rows are written with their names,
a killed job resumes to the same bytes, a replica lost mid-job costs no rows.

The folder: 2,000 crops of the offline photographs (JPEG, PNG, WebP, 32-96 px) in 7 sub-folders,
3 corrupt files, 1 empty file and 1 text file. The module's server computes one image per forward
pass (``max_batch_size=1``): a row then never depends on which other images shared its batch
(LargeNet's rows differ by ~1e-7 between batch compositions), so two runs of one job can be
compared byte for byte, and a stream row with a single-image ``Embed`` exactly.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest

from featurizer_client import AsyncFeaturizerClient, FeaturizerClient, FeaturizerError
from featurizer_client.journal import Journal
from featurizer_client.window import Failure, ItemFailure
from tests.support.photo_folder import PhotoFolder, make_photo_folder
from tests.support.registries import publish_largenet
from tests.support.servers import ServerProcess, running_server

CLI = str(Path(sys.executable).with_name("featurizer-client"))
COUNT = 2_000
WINDOW = 64          # --max-in-flight and the journal's commit interval (both default to 64)
NEAR = 1e-5          # replicas batch freely: the same rows within float32 rounding
PROGRESS = re.compile(rb"(\d+)/(\d+) \[")


@pytest.fixture(scope="module")
def registry(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("bulk-jobs-registry")
    publish_largenet(root, "largenet", num_classes=10, labels=[str(i) for i in range(10)], seed=3)
    return root


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> PhotoFolder:
    return make_photo_folder(tmp_path_factory.mktemp("photos"), COUNT)


@pytest.fixture(scope="module")
def server(registry):
    with running_server(registry, max_batch_size=1) as handle:
        yield handle


def embed_cli(folder: PhotoFolder, out: Path, target: str, *flags: str) -> subprocess.CompletedProcess:
    return subprocess.run([CLI, "embed", str(folder.root), "-o", str(out), "--model", "largenet",
                           "--target", target, *flags], capture_output=True, timeout=300)


def files_of(out: Path) -> dict[str, bytes]:
    stem = out.with_suffix("")
    return {name: Path(f"{stem}{suffix}").read_bytes()
            for name, suffix in (("matrix", ".npy"), ("names", ".names.txt"), ("failures", ".failures.jsonl"))}


@pytest.fixture(scope="module")
def skipped(folder, server, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """One uninterrupted ``--on-error skip`` run: the reference for the other tests."""
    out = tmp_path_factory.mktemp("skip-run") / "photos.npy"
    return out, embed_cli(folder, out, server.target, "--on-error", "skip")


def test_skip_writes_every_good_image_with_its_name_and_the_four_failures(folder, server, skipped):
    out, done = skipped
    assert done.returncode == 1, done.stderr  # some inputs failed
    stderr = done.stderr.decode()
    assert "skipped 1 files that are not images by extension" in stderr and str(folder.not_image) in stderr
    X = np.load(out)
    names = out.with_suffix(".names.txt").read_text().splitlines()
    failures = [json.loads(line) for line in out.with_suffix(".failures.jsonl").read_text().splitlines()]
    assert X.shape == (COUNT, 10) and X.dtype == np.float32
    assert names == [str(p) for p in folder.good]
    assert [f["source"] for f in failures] == [str(p) for p in folder.bad]
    assert [f["index"] for f in failures] == [folder.images.index(p) for p in folder.bad]
    assert {f["code"] for f in failures} == {"INVALID_ARGUMENT"}
    assert "empty image bytes" in failures[-1]["message"]

    rng = np.random.default_rng(0)
    sample = set(rng.choice(COUNT, 50, replace=False).tolist())
    for bad in folder.bad:  # the good images on either side of every bad one
        after = next(i for i, p in enumerate(folder.good) if p > bad)
        sample |= {after - 1, after}
    with FeaturizerClient(server.target) as client:
        for i in sorted(sample):
            assert np.array_equal(X[i], client.embed([folder.good[i]], model="largenet")[0]), folder.good[i]
        everything = client.embed(folder.good, model="largenet")
    assert np.array_equal(X, everything)


def test_raise_names_the_file_and_its_global_index(folder, server, tmp_path):
    first_bad = folder.bad[0]
    index = folder.images.index(first_bad)
    done = embed_cli(folder, tmp_path / "x.npy", server.target)
    assert done.returncode == 1
    assert f"INVALID_ARGUMENT: images[{index}] ({first_bad}): cannot decode" in done.stderr.decode()
    with FeaturizerClient(server.target) as client:
        with pytest.raises(ItemFailure) as raised:
            list(client.iter_embed(folder.root, model="largenet"))
        # The unary path names it the same way: item 70 of a 76-image call is images[70], not [6].
        window = folder.images[index - 70:index + 6]
        with pytest.raises(FeaturizerError) as unary:
            client.embed(window, model="largenet", batch_size=64)
    assert (raised.value.failure.index, raised.value.failure.source) == (index, str(first_bad))
    assert raised.value.code is grpc.StatusCode.INVALID_ARGUMENT
    assert unary.value.details.startswith(f"images[70] ({first_bad}): ")


def test_collect_returns_failures_beside_the_rows_sync_and_async(folder, server, skipped):
    out, _ = skipped
    with FeaturizerClient(server.target) as client:
        collected = client.embed_many(folder.root, model="largenet", on_error="collect")

    async def collect_async():
        async with AsyncFeaturizerClient(server.target) as client:
            return await client.embed_many(folder.root, model="largenet", on_error="collect", streams=3)

    async_collected = asyncio.run(collect_async())
    for result in (collected, async_collected):
        assert np.array_equal(result.values, np.load(out))
        assert result.sources == [str(p) for p in folder.good]
        assert [(f.source, f.code) for f in result.failures] == [(str(p), grpc.StatusCode.INVALID_ARGUMENT)
                                                                 for p in folder.bad]
        assert all(isinstance(f, Failure) and f.message for f in result.failures)


def test_a_killed_job_resumes_to_the_same_bytes_and_resends_at_most_a_window(folder, server, skipped, tmp_path):
    reference, _ = skipped
    out = tmp_path / "photos.npy"
    journal = tmp_path / "photos.journal.json"
    before = server.sample("featurizer_images_total", model="largenet")
    job = subprocess.Popen([CLI, "embed", str(folder.root), "-o", str(out), "--model", "largenet",
                            "--on-error", "skip", "--progress", "--target", server.target],
                           stderr=subprocess.PIPE)
    seen = b""
    while True:  # the progress bar counts written images; it is drawn after each one is committed
        chunk = job.stderr.read1(4096)
        assert chunk, b"the job ended before it was killed: " + seen
        seen += chunk
        counts = PROGRESS.findall(seen)
        if counts and int(counts[-1][0]) >= 8 * WINDOW:
            break
    job.send_signal(signal.SIGKILL)
    job.wait(30)
    job.stderr.close()
    killed = Journal.load(journal)
    served_first = server.sample("featurizer_images_total", model="largenet") - before
    assert killed is not None and not killed.complete and killed.done >= 7 * WINDOW and killed.done < COUNT

    resumed = embed_cli(folder, out, server.target, "--on-error", "skip", "--resume")
    served = server.sample("featurizer_images_total", model="largenet") - before
    assert resumed.returncode == 1, resumed.stderr
    assert f"resumed after {killed.done} of {COUNT + 4} inputs" in resumed.stderr.decode()
    assert files_of(out) == files_of(reference)
    # Sent twice: only what the killed run had sent past its last commit (at most one commit
    # interval written and one window in flight). The killed run's last items may still be served
    # after it died, so its own count is a lower bound, and only the total is exact.
    assert COUNT <= served <= COUNT + 2 * WINDOW
    assert served_first >= killed.rows

    again = embed_cli(folder, out, server.target, "--on-error", "skip", "--resume")  # complete: nothing sent
    assert server.sample("featurizer_images_total", model="largenet") - before == served
    assert again.returncode == 1 and files_of(out) == files_of(reference)


def test_dedup_sends_identical_files_once_and_copies_their_rows(folder, server, tmp_path):
    originals = folder.good[:30]
    inputs = [p for p in originals for _ in range(2)] + originals[:5]  # 30 distinct, 35 copies
    with FeaturizerClient(server.target) as client:
        before = server.sample("featurizer_images_total", model="largenet")
        summary = client.embed_to(inputs, tmp_path / "d.npy", model="largenet", dedup=True)
        sent = server.sample("featurizer_images_total", model="largenet") - before
        expected = client.embed(inputs, model="largenet")
    assert (sent, summary.duplicates, summary.rows) == (30, 35, 65)
    assert np.array_equal(np.load(tmp_path / "d.npy"), expected)
    assert (tmp_path / "d.names.txt").read_text().splitlines() == [str(p) for p in inputs]


def test_predict_writes_json_lines_naming_each_image(folder, server, tmp_path):
    subset = tmp_path / "subset"
    subset.mkdir()
    files = folder.good[:20] + folder.bad[:1]
    for path in files:
        (subset / path.name).write_bytes(path.read_bytes())
    out = tmp_path / "p.jsonl"
    done = subprocess.run([CLI, "predict", str(subset), "-o", str(out), "--model", "largenet", "--on-error", "skip",
                           "--target", server.target], capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    good = sorted(subset / p.name for p in folder.good[:20])
    with FeaturizerClient(server.target) as client:
        expected = client.predict(good, model="largenet")
    assert [r["image"] for r in rows] == [str(p) for p in good]
    assert [(r["label"], r["index"]) for r in rows] == [(p.label, p.index) for p in expected]
    failures = (tmp_path / "p.failures.jsonl").read_text().splitlines()
    assert [json.loads(f)["source"] for f in failures] == [str(subset / folder.bad[0].name)]


@pytest.mark.slow  # two `featurizer serve` start-ups
def test_a_replica_stopped_mid_job_costs_no_rows(registry, folder, skipped):
    reference, _ = skipped
    with ThreadPoolExecutor(2) as pool:
        replicas = list(pool.map(lambda _: ServerProcess(registry, "--grace-seconds", "1"), range(2)))
    target = "ipv4:" + ",".join(f"127.0.0.1:{r.port}" for r in replicas)
    stopping, halfway = threading.Event(), threading.Event()

    def feed():
        """The job's input; a third of the way in, it waits until one replica is being stopped."""
        for i, path in enumerate(folder.good):
            if i == COUNT // 3:
                halfway.set()
                stopping.wait(60)
            yield path

    try:
        with FeaturizerClient(target, timeout=120) as client, ThreadPoolExecutor(1) as pool:
            job = pool.submit(client.embed_many, feed(), model="largenet", streams=2)
            assert halfway.wait(60)
            # round_robin may have put both streams on the replica that connected first: stop
            # one that is serving the job.
            served = [r.scrape("featurizer_images_total", model="largenet") for r in replicas]
            stopped, other = (replicas[0], replicas[1]) if served[0] >= served[1] else (replicas[1], replicas[0])
            served_by_stopped = max(served)
            stopped.proc.send_signal(signal.SIGTERM)
            stopping.set()
            result = job.result(180)
            assert stopped.proc.wait(60) == 0
            served_by_other = other.scrape("featurizer_images_total", model="largenet")
    finally:
        for replica in replicas:
            replica.kill()
    assert result.sources == [str(p) for p in folder.good] and not result.failures
    assert np.abs(result.values - np.load(reference)).max() <= NEAR  # every row, in order, none lost
    assert served_by_stopped > 0 and served_by_other > 0  # the other replica took over the rest
