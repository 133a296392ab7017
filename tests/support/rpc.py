"""Thin helpers over the generated featurizer.v1 stubs, for tests that check the wire contract itself."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import grpc
import numpy as np
from featurizer_client.tensors import from_proto, to_proto
from featurizer_client.v1 import featurizer_pb2 as pb
from featurizer_client.v1 import featurizer_pb2_grpc as pb_grpc

TIMEOUT_S = 60.0


@contextlib.contextmanager
def featurizer_stub(target: str) -> Iterator[pb_grpc.FeaturizerStub]:
    with grpc.insecure_channel(target, options=[("grpc.max_receive_message_length", 256 << 20)]) as channel:
        yield pb_grpc.FeaturizerStub(channel)


def tensor_images(arrays: Sequence[np.ndarray]) -> list[pb.Image]:
    """uint8 HWC (server preprocesses) or float32 CHW (already preprocessed) raw tensors."""
    return [pb.Image(tensor=to_proto(np.ascontiguousarray(a))) for a in arrays]


def embed(stub: pb_grpc.FeaturizerStub, model: str, images: list[pb.Image], *, version: int = 0,
          layer: str = "", pooling: int = pb.POOLING_DEFAULT) -> tuple[pb.EmbedResponse, np.ndarray]:
    request = pb.EmbedRequest(model=model, version=version, images=images,
                              options=pb.EmbedOptions(layer=layer, pooling=pooling))
    response = stub.Embed(request, timeout=TIMEOUT_S)
    return response, from_proto(response.embeddings)


def versions_by_number(info: pb.ModelInfo) -> dict[int, pb.ModelVersionInfo]:
    return {v.version: v for v in info.versions}
