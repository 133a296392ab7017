"""``FeaturizerClient``: the synchronous SDK entry point, owning one channel and one stub."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Optional

import grpc
import numpy as np

from .errors import FeaturizerError
from .inputs import ImageLike, iter_images
from .tensors import from_proto
from .v1 import featurizer_pb2 as pb
from .v1 import featurizer_pb2_grpc as pb_grpc

DEFAULT_TIMEOUT_S = 60.0


class FeaturizerClient:
    """Blocking client. Use as a context manager so the channel is closed.

    >>> with FeaturizerClient("localhost:50051") as client:
    ...     X = client.embed(["cat.jpg"], model="alexnet")
    """

    def __init__(self, target: str, *, timeout: Optional[float] = DEFAULT_TIMEOUT_S,
                 channel: Optional[grpc.Channel] = None) -> None:
        self.target = target
        self.timeout = timeout
        self._channel = channel or grpc.insecure_channel(target, options=_channel_options())
        self._stub = pb_grpc.FeaturizerStub(self._channel)

    def __enter__(self) -> "FeaturizerClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def embed(self, images: ImageLike | Iterable[ImageLike], *, model: str, version: int = 0,
              timeout: Optional[float] = None) -> np.ndarray:
        """Embeddings as a float32 array ``[N, D]``; row i belongs to image i."""
        request = pb.EmbedRequest(model=model, version=version, images=list(iter_images(images)))
        response = self._call(self._stub.Embed, request, timeout)
        return from_proto(response.embeddings).astype(np.float32, copy=False)

    def _call(self, method, request, timeout: Optional[float]):
        try:
            return method(request, timeout=self.timeout if timeout is None else timeout)
        except grpc.RpcError as error:
            raise FeaturizerError.from_rpc_error(error) from None


def _channel_options() -> list[tuple[str, int]]:
    # Embeddings of big batches exceed gRPC's 4 MB default.
    return [("grpc.max_receive_message_length", 256 * 1024 * 1024),
            ("grpc.max_send_message_length", 256 * 1024 * 1024)]
