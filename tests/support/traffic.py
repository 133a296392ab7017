"""Well-behaved background callers for reliability tests: threads calling a server over real gRPC
until stopped, each checking that every answer equals its first one and recording any error."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import grpc
import numpy as np
from featurizer_client.tensors import from_proto
from featurizer_client.v1 import featurizer_pb2 as pb
from featurizer_client.v1 import featurizer_pb2_grpc as pb_grpc


def answer_of(response) -> np.ndarray:
    """The numbers of a response (embeddings, or top-k probabilities), without model/version."""
    if isinstance(response, pb.EmbedResponse):
        return from_proto(response.embeddings)
    return np.array([[c.probability for c in p.classes] for p in response.predictions])


@dataclass
class Traffic:
    target: str
    requests: Sequence[pb.EmbedRequest | pb.PredictRequest]   # caller i sends requests[i % len]
    stop: threading.Event = field(default_factory=threading.Event)
    calls: list[int] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    progress: threading.Condition = field(default_factory=threading.Condition)

    def wait_for_more(self, calls: int = 1, timeout: float = 120) -> bool:
        """Block until every caller has had ``calls`` more answers (traffic overlaps what came before)."""
        with self.progress:
            target = [c + calls for c in self.calls]
            return self.progress.wait_for(lambda: all(c >= t for c, t in zip(self.calls, target)) or bool(self.errors),
                                          timeout)

    def run(self, index: int) -> None:
        request = self.requests[index % len(self.requests)]
        with grpc.insecure_channel(self.target) as channel:
            stub = pb_grpc.FeaturizerStub(channel)
            method = stub.Embed if isinstance(request, pb.EmbedRequest) else stub.Predict
            first = None
            while not self.stop.is_set():
                try:
                    answer = answer_of(method(request, timeout=60))
                except grpc.RpcError as error:
                    self.errors.append(f"caller {index} ({request.model}): {error.code().name} {error.details()}")
                    with self.progress:
                        self.progress.notify_all()
                    continue
                first = answer if first is None else first
                if not np.array_equal(answer, first):
                    self.errors.append(f"caller {index} ({request.model}): answer changed")
                with self.progress:
                    self.calls[index] += 1
                    self.progress.notify_all()


@contextmanager
def running_traffic(target: str, requests: Sequence, callers: int = 8) -> Iterator[Traffic]:
    """``callers`` threads calling until the block ends; check ``errors`` and ``calls`` after it."""
    traffic = Traffic(target, requests, calls=[0] * callers)
    threads = [threading.Thread(target=traffic.run, args=(i,), daemon=True) for i in range(callers)]
    for thread in threads:
        thread.start()
    try:
        yield traffic
    finally:
        traffic.stop.set()
        for thread in threads:
            thread.join(120)
