"""A bare gRPC server answering Predict with a fixed response: the cost of gRPC alone.

It parses the same requests featurizer gets for LargeNet and returns a response of the same
shape (one Prediction with two classes per image) without decoding or running anything, so
featurizer/echo on LargeNet is the share of the wire/framework floor that featurizer reaches.
"""

from __future__ import annotations

import argparse
import asyncio

import grpc

from featurizer_client.v1 import featurizer_pb2 as pb
from featurizer_client.v1 import featurizer_pb2_grpc as pb_grpc

_PREDICTION = pb.Prediction(classes=[pb.ClassScore(index=1, label="positive", probability=0.5),
                                     pb.ClassScore(index=0, label="negative", probability=0.5)])


class EchoFeaturizer(pb_grpc.FeaturizerServicer):
    async def Predict(self, request: pb.PredictRequest, context: grpc.aio.ServicerContext) -> pb.PredictResponse:
        return pb.PredictResponse(model=request.model, version=1, predictions=[_PREDICTION] * len(request.images))


async def serve(port: int) -> None:
    server = grpc.aio.server()
    pb_grpc.add_FeaturizerServicer_to_server(EchoFeaturizer(), server)
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    print(f"bench server listening on 127.0.0.1:{bound}", flush=True)
    await server.wait_for_termination()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=0)
    asyncio.run(serve(parser.parse_args(argv).port))


if __name__ == "__main__":
    main()
