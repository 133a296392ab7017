"""The afternoon baseline: a plain gRPC server doing one forward pass per request.

Same featurizer.v1 contract, same preprocessing and model as featurizer (reference_path), but
no batching across callers, no thread for the model: the handler decodes and runs the model in
the gRPC worker thread, as most first versions do.
"""

from __future__ import annotations

import argparse
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reference_path import forward, load_features, preprocess  # noqa: E402

from featurizer_client.v1 import featurizer_pb2 as pb  # noqa: E402
from featurizer_client.v1 import featurizer_pb2_grpc as pb_grpc  # noqa: E402


class NaiveFeaturizer(pb_grpc.FeaturizerServicer):
    def __init__(self) -> None:
        self.model = load_features()

    def Embed(self, request: pb.EmbedRequest, context: grpc.ServicerContext) -> pb.EmbedResponse:
        try:
            images = [preprocess(image.encoded) for image in request.images]
        except Exception as error:  # the naive server still says what was wrong
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
        rows = forward(self.model, images)
        return pb.EmbedResponse(model=request.model, version=1, embeddings=pb.Tensor(
            dtype=pb.DTYPE_FLOAT32, shape=list(rows.shape), data=rows.numpy().tobytes()))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--workers", type=int, default=16, help="gRPC handler threads")
    args = parser.parse_args(argv)
    server = grpc.server(ThreadPoolExecutor(max_workers=args.workers),
                         options=[("grpc.max_receive_message_length", 64 * 1024 * 1024)])
    pb_grpc.add_FeaturizerServicer_to_server(NaiveFeaturizer(), server)
    port = server.add_insecure_port(f"127.0.0.1:{args.port}")
    server.start()
    print(f"bench server listening on 127.0.0.1:{port}", flush=True)
    server.wait_for_termination()


if __name__ == "__main__":
    main()
