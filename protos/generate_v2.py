"""Generate the Open Inference Protocol (KServe v2) stubs into ``featurizer_client.v2``.

The sibling of ``generate.py`` (featurizer.v1), done the same way and by the same pinned
grpcio-tools (gencode old enough for protobuf 6.3x and 7.x: see there): run ``python
protos/generate_v2.py`` after editing ``protos/inference/grpc_predict_v2.proto``. The test
``tests/unit/test_stubs_v2.py`` regenerates into a temporary directory and fails when the
committed stubs differ, so stale stubs never land.

``featurizer_client`` never imports ``v2`` by itself: the protocol's messages are registered in
protobuf's default pool under the package ``inference``, as tritonclient's are, so importing
both in one process would clash. Only the server (and whoever asks for it) imports ``v2``.
"""

from __future__ import annotations

import sys
from pathlib import Path

PROTO_ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(PROTO_ROOT))
from generate import generate_stubs, run_generator  # noqa: E402  (the sibling script: one generator, one pin check)
PROTO_FILE = "inference/grpc_predict_v2.proto"
DEFAULT_OUT = PROTO_ROOT.parent / "client" / "featurizer_client" / "v2"
GENERATED = ("grpc_predict_v2_pb2.py", "grpc_predict_v2_pb2.pyi", "grpc_predict_v2_pb2_grpc.py")


def generate(out_dir: Path) -> list[Path]:
    """The Open Inference Protocol stubs, made as the featurizer.v1 ones are."""
    return generate_stubs(PROTO_FILE, out_dir, GENERATED)


def main() -> int:
    return run_generator(generate, DEFAULT_OUT, __doc__)


if __name__ == "__main__":
    sys.exit(main())
