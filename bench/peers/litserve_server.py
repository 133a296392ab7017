"""LitServe serving the same model with its own batching, at featurizer's batch size and delay.

Requests are LitServe's default JSON (base64 JPEGs), decoded and preprocessed in
``decode_request`` with featurizer's own steps; ``predict`` runs one batched forward pass; the
rows go back base64-encoded float32 (JSON floats would cost LitServe more than featurizer's
raw bytes, which would not be a fair comparison).
"""

from __future__ import annotations

import argparse
import base64
import sys
from pathlib import Path

import litserve as ls
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from reference_path import forward, load_features, preprocess  # noqa: E402


class AlexNetFeaturesAPI(ls.LitAPI):
    def setup(self, device: str) -> None:
        self.model = load_features()

    def decode_request(self, request: dict) -> list[torch.Tensor]:
        return [preprocess(base64.b64decode(data)) for data in request["images"]]

    def batch(self, inputs: list[list[torch.Tensor]]) -> list[list[torch.Tensor]]:
        return inputs  # requests stay lists of images; predict stacks them once

    def predict(self, requests: list[list[torch.Tensor]]) -> list[torch.Tensor]:
        sizes = [len(images) for images in requests]
        rows = forward(self.model, [image for images in requests for image in images])
        return list(torch.split(rows, sizes))

    def unbatch(self, output: list[torch.Tensor]) -> list[torch.Tensor]:
        return output

    def encode_response(self, rows: torch.Tensor) -> dict:
        return {"shape": list(rows.shape), "embeddings": base64.b64encode(rows.numpy().tobytes()).decode()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--max-batch-size", type=int, default=64)
    parser.add_argument("--max-delay-ms", type=float, default=2.0)
    args = parser.parse_args(argv)
    api = AlexNetFeaturesAPI(max_batch_size=args.max_batch_size, batch_timeout=args.max_delay_ms / 1000)
    server = ls.LitServer(api, accelerator="cpu", devices=1, workers_per_device=1, timeout=60)
    server.run(host="127.0.0.1", port=args.port, num_api_servers=1, generate_client_file=False, log_level="warning")


if __name__ == "__main__":
    main()
