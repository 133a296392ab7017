"""Registry files: confined, regular-file-only reads; bounded reads on daemon
threads; published files world-readable whatever the umask; the pod's filesystem group."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import stat
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from featurizer.registry.registry import Registry, RegistryError
from featurizer.registry.files import UnreadableError, open_confined, read_confined
from featurizer.registry.reads import BoundedReads, RegistryTimeout
from tests.support.registries import publish_largenet

REPO = Path(__file__).resolve().parents[2]


@contextlib.contextmanager
def umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def modes(root: Path) -> dict[str, int]:
    """Relative path -> permission bits of ``root`` and everything under it."""
    found = {".": stat.S_IMODE(root.stat().st_mode)}
    for path in root.rglob("*"):
        found[str(path.relative_to(root))] = stat.S_IMODE(path.stat().st_mode)
    return found


def assert_world_readable(root: Path) -> None:
    wrong = {name: oct(mode) for name, mode in modes(root).items()
             if mode != (0o755 if (root / name).is_dir() else 0o644)}
    assert wrong == {}, wrong


# ----- reading --------------------------------------------------------------------------------
def test_reads_refuse_what_is_not_a_regular_file_inside_the_root(tmp_path):
    root = tmp_path / "registry"
    (root / "m/1").mkdir(parents=True)
    (root / "m/1/model.json").write_text("{}")
    (tmp_path / "secret.json").write_text('{"kind": "features"}')
    os.mkfifo(root / "m/1/fifo.json")
    (root / "m/1/dir.json").mkdir()
    (root / "m/1/out.json").symlink_to(tmp_path / "secret.json")
    (root / "m/1/in.json").symlink_to("model.json")
    (root / "m/1/loop.json").symlink_to("loop.json")

    assert read_confined(root, "m/1/model.json") == read_confined(root, "m/1/in.json") == b"{}"
    started = time.monotonic()
    with pytest.raises(UnreadableError, match=r"^m/1/fifo.json: unreadable \(not a regular file"):
        read_confined(root, "m/1/fifo.json")  # opening it without O_NONBLOCK would wait for a writer
    assert time.monotonic() - started < 5
    with pytest.raises(UnreadableError, match=r"^m/1/dir.json: unreadable \(Is a directory\)$") as isdir:
        read_confined(root, "m/1/dir.json")
    assert isdir.value.errno == errno.EISDIR and not isdir.value.transient
    with pytest.raises(RegistryError, match=r"^m/1/out.json: resolves outside the registry root$"):
        read_confined(root, "m/1/out.json")
    with pytest.raises(RegistryError, match=r"^m/1/\.\./\.\./\.\./secret.json: resolves outside"):
        read_confined(root, "m/1/../../../secret.json")
    for name in ("loop.json", "missing.json"):
        with pytest.raises(UnreadableError, match=rf"^m/1/{name}: unreadable") as error:
            open_confined(root, f"m/1/{name}")
        assert str(tmp_path) not in str(error.value)
    assert error.value.errno == errno.ENOENT


def test_manifest_and_aliases_are_read_through_the_confined_reader(tmp_path):
    root = tmp_path / "registry"
    publish_largenet(root, "ok")
    publish_largenet(tmp_path / "outside", "ok")
    (root / "bad/1").mkdir(parents=True)
    (root / "bad/1/model.json").symlink_to(tmp_path / "outside/ok/1/model.json")
    (tmp_path / "aliases.json").write_text('{"prod": "ok"}')
    (root / "aliases.json").symlink_to(tmp_path / "aliases.json")
    registry = Registry(root)
    assert registry.manifest("ok", 1).architecture == "largenet"
    with pytest.raises(RegistryError, match="^bad/1/model.json: resolves outside the registry root$"):
        registry.manifest("bad", 1)
    scan = registry.scan()
    assert scan.aliases == {} and scan.alias_error == "aliases.json: resolves outside the registry root"


# ----- bounded reads ----------------------------------------------------------------------------
def test_a_blocked_read_times_out_and_is_refused_until_it_returns(tmp_path):
    fifo = tmp_path / "hung"
    os.mkfifo(fifo)

    def blocked_read() -> bytes:
        with open(fifo, "rb") as handle:  # blocks in the kernel until a writer opens the FIFO
            return handle.read()

    async def scenario() -> None:
        reads = BoundedReads(timeout_s=0.3)
        with pytest.raises(RegistryTimeout, match=r"^m/1/model.json: no answer within 0.3 s") as first:
            await reads.call("m/1/model.json", blocked_read)
        assert first.value.transient and reads.stuck() == ["m/1/model.json"]
        threads = threading.active_count()
        with pytest.raises(RegistryTimeout, match="an earlier read, started 0 s ago, has not returned"):
            await reads.call("m/1/model.json", blocked_read)  # at once, without a second thread
        assert threading.active_count() == threads
        assert await reads.call("other", lambda: 42) == 42
        with pytest.raises(ZeroDivisionError):
            await reads.call("raises", lambda: 1 / 0)
        with open(fifo, "wb"):
            pass
        deadline = time.monotonic() + 10
        while reads.stuck() and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert reads.stuck() == []
        assert await reads.call("m/1/model.json", lambda: b"{}") == b"{}"

    asyncio.run(scenario())


def test_a_read_stuck_for_good_does_not_hold_process_exit(tmp_path):
    fifo = tmp_path / "hung"
    os.mkfifo(fifo)
    script = textwrap.dedent(f"""
        import asyncio
        from featurizer.registry.reads import BoundedReads, RegistryTimeout

        async def main():
            try:
                await BoundedReads(0.2).call("registry scan", lambda: open({str(fifo)!r}, "rb"))
            except RegistryTimeout as error:
                print("timed out:", error, flush=True)

        asyncio.run(main())
    """)
    started = time.monotonic()
    # A ThreadPoolExecutor worker would be joined at exit and hang this process for good.
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith("timed out: registry scan: no answer within 0.2 s")
    assert time.monotonic() - started < 60


# ----- writing ----------------------------------------------------------------------------------
def test_publish_and_alias_write_world_readable_files_under_a_restrictive_umask(tmp_path):
    root = tmp_path / "registry"
    registry = Registry(root)
    with umask(0o077):
        publish_largenet(root, "m")  # Registry.publish, as every command does
        manifest = registry.manifest("m", 1)
        registry.publish("m", manifest, registry.load_weights("m", 1, manifest), extra_files={"report.json": b"{}"})
        registry.set_alias("prod", "m@2")
    assert sorted(os.listdir(root / "m/2")) == ["model.json", "report.json", "weights.safetensors"]
    assert_world_readable(root)  # before: weights 0600 (safetensors), directories 0700 (umask)


def test_registry_init_demo_writes_world_readable_files_under_a_restrictive_umask(tmp_path):
    root = tmp_path / "demo"
    result = subprocess.run([sys.executable, "-m", "featurizer", "registry", "init", str(root), "--demo"],
                            capture_output=True, text=True, timeout=600, preexec_fn=lambda: os.umask(0o077))
    assert result.returncode == 0, result.stderr[-2000:]
    assert (root / "alexnet/1/weights.safetensors").is_file() and (root / "aliases.json").is_file()
    assert (root / "fashion-shoes/1/weights.safetensors").is_file()  # published by the training run
    assert_world_readable(root)  # the pod's uid 10001 read FAILED 'Permission denied' before


def test_the_pod_reads_the_registry_with_a_filesystem_group():
    deployment = yaml.safe_load((REPO / "deploy/k8s/base/deployment.yaml").read_text())
    pod = deployment["spec"]["template"]["spec"]["securityContext"]
    assert pod["fsGroup"] == pod["runAsUser"] == 10001
    assert pod["fsGroupChangePolicy"] == "OnRootMismatch"  # no recursive chown of a big registry per start
