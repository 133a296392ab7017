"""Child processes of the bench: started in their own session, always killed on exit.

Every wait has a deadline, so a server that never comes up (or never goes down) costs a bounded
time and an error in the results instead of a hung run.
"""

from __future__ import annotations

import atexit
import os
import re
import signal
import subprocess
import time
from pathlib import Path
from typing import Optional

import psutil

_LIVE: set["Child"] = set()
_RUNNING: set[subprocess.Popen] = set()  # one-shot children of run_to_json


class ChildFailed(RuntimeError):
    """A child exited, or did not become ready, within its deadline."""


class Child:
    """One subprocess whose stdout+stderr go to a log file we can search."""

    def __init__(self, name: str, argv: list[str], log_dir: Path, env: Optional[dict] = None) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True,
                                     env={**os.environ, **(env or {})})
        _LIVE.add(self)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for_line(self, pattern: str, timeout: float) -> re.Match:
        """Poll the log (an external process: polling with a deadline) until ``pattern`` appears."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = regex.search(self.log_text())
            if match:
                return match
            if self.proc.poll() is not None:
                raise ChildFailed(f"{self.name} exited with {self.proc.returncode}:\n{self.log_text()[-2000:]}")
            time.sleep(0.1)
        raise ChildFailed(f"{self.name}: no line matching {pattern!r} after {timeout:.0f}s:\n{self.log_text()[-2000:]}")

    def rss_bytes(self) -> int:
        """Resident memory of the whole process tree (peers fork workers)."""
        try:
            root = psutil.Process(self.proc.pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return 0
        total = 0
        for proc in procs:
            try:
                total += proc.memory_info().rss
            except psutil.NoSuchProcess:
                pass
        return total

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM the process group, SIGKILL it after ``grace`` seconds."""
        if self.proc.poll() is None:
            _signal_group(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                pass
        _signal_group(self.proc.pid, signal.SIGKILL)  # stragglers of the group (worker processes)
        if self.proc.poll() is None:
            self.proc.wait(10)
        self._log.close()
        _LIVE.discard(self)


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def run_to_json(name: str, argv: list[str], log_dir: Path, timeout: float) -> str:
    """Run a child to completion and return its last stdout line (a JSON document)."""
    out_path = log_dir / f"{name}.out"
    with open(out_path, "w") as out, open(log_dir / f"{name}.err", "w") as err:
        proc = subprocess.Popen(argv, stdout=out, stderr=err, start_new_session=True)
        _RUNNING.add(proc)
        try:
            code = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            _signal_group(proc.pid, signal.SIGKILL)
            proc.wait(10)
            raise ChildFailed(f"{name} did not finish within {timeout:.0f}s") from None
        finally:
            _RUNNING.discard(proc)
    lines = out_path.read_text().strip().splitlines()
    if code != 0 or not lines:
        raise ChildFailed(f"{name} exited with {code}:\n{(log_dir / f'{name}.err').read_text()[-2000:]}")
    return lines[-1]


def stop_all() -> None:
    for proc in list(_RUNNING):
        _signal_group(proc.pid, signal.SIGKILL)
    for child in list(_LIVE):
        child.stop(grace=3.0)


def _on_signal(signum: int, frame) -> None:
    stop_all()
    raise SystemExit(128 + signum)


atexit.register(stop_all)
signal.signal(signal.SIGTERM, _on_signal)
