"""Peak resident memory of ``featurizer-client embed`` on a 2,000- and a 20,000-image folder.

The client writes rows as they arrive (``embed_to``), so its peak RSS should not grow with the
job beyond the list of paths (a string a file). Each job runs as its own process and its
peak is the kernel's ``ru_maxrss`` for that child (``os.wait4``), not a sampled guess. The server
(LargeNet, an in-process ``ServerThread``) is not counted. Prints both figures; asserts nothing.

    .venv/bin/python bench/bulk_memory.py [--small 2000] [--large 20000]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.photo_folder import make_photo_folder  # noqa: E402
from tests.support.registries import publish_largenet  # noqa: E402
from tests.support.servers import running_server  # noqa: E402

CLI = str(Path(sys.executable).with_name("featurizer-client"))


# The kernel's peak of a forked child starts at its parent's size (this process holds torch and
# the server), so the client is started by a small Python process and measured from there.
_MEASURE = """
import os, subprocess, sys, time
started = time.monotonic()
child = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
_, status, usage = os.wait4(child.pid, 0)
print(usage.ru_maxrss * 1024, time.monotonic() - started, os.waitstatus_to_exitcode(status))
"""


def peak_rss_of(args: list[str]) -> tuple[int, float, int]:
    """(peak RSS in bytes, seconds, exit status) of one client process."""
    done = subprocess.run([sys.executable, "-c", _MEASURE, *args], capture_output=True, text=True, check=True)
    rss, seconds, code = done.stdout.split()
    return int(rss), float(seconds), int(code)  # ru_maxrss is in KiB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", type=int, default=2_000)
    parser.add_argument("--large", type=int, default=20_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        publish_largenet(root / "registry", "largenet", num_classes=10, labels=[str(i) for i in range(10)])
        folders = {n: make_photo_folder(root / f"photos-{n}", n).root for n in (args.small, args.large)}
        with running_server(root / "registry") as server:
            for n, folder in folders.items():
                out = root / f"out-{n}.npy"
                rss, seconds, code = peak_rss_of([CLI, "embed", str(folder), "-o", str(out), "--model", "largenet",
                                                  "--on-error", "skip", "--target", server.target])
                print(f"{n:>6} images ({n + 4} inputs, 4 bad): client peak RSS {rss / 2**20:.1f} MiB, "
                      f"{seconds:.1f} s, exit {code}")


if __name__ == "__main__":
    main()
