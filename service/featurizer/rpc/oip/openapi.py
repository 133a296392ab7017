"""The OpenAPI 3 document of the v2 HTTP endpoints, served at ``GET /v2/openapi.json``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from featurizer.rpc.oip.metadata import EMBEDDINGS, IMAGES, LABELS, PIXELS, PROBABILITIES, TENSOR


def _json(schema: str) -> dict:
    return {"content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}}}


def _error(description: str) -> dict:
    return {"description": description, **_json("Error")}


def openapi_document(models: Sequence[str], version: str) -> dict[str, Any]:
    model = {"name": "model", "in": "path", "required": True,
             "schema": {"type": "string", **({"enum": list(models)} if models else {})},
             "description": "a model name or alias"}
    model_version = {"name": "version", "in": "path", "required": True,
                     "schema": {"type": "string", "pattern": "^[1-9][0-9]*$"}}
    errors = {"400": _error("bad request: tensor, parameter or image (message says which)"),
              "401": _error("missing or invalid bearer token"), "404": _error("unknown model or version"),
              "413": _error("body above --max-message-bytes"), "429": _error("the model's queue is full"),
              "503": _error("model unloading or server shutting down")}
    infer: dict[str, Any] = {
        "summary": "Run one inference (JSON tensors, or Triton's binary tensor data extension)",
        "parameters": [{"name": "Inference-Header-Content-Length", "in": "header", "required": False,
                        "schema": {"type": "integer"},
                        "description": "binary extension: size of the JSON header at the start of the body"}],
        "requestBody": {"required": True, "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/InferRequest"}},
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"},
                                         "description": "JSON header, then each input's binary_data_size bytes"}}},
        "responses": {"200": {"description": "outputs", "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/InferResponse"}},
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}, **errors},
    }
    metadata = {"summary": "Model metadata: inputs, outputs, versions, platform",
                "responses": {"200": {"description": "metadata", **_json("ModelMetadata")}, **errors}}
    ready = {"summary": "200 when the model (version) can serve, 503 when it cannot",
             "responses": {"200": {"description": "ready"}, "503": {"description": "not ready"},
                           "404": _error("unknown model or version")}}
    paths: dict[str, Any] = {
        "/v2": {"get": {"summary": "Server metadata", "responses": {"200": {"description": "name, version, extensions"}}}},
        "/v2/health/live": {"get": {"summary": "200 while the process serves (no token needed)",
                                    "responses": {"200": {"description": "live"}}}},
        "/v2/health/ready": {"get": {"summary": "200 once every model was loaded, 503 while starting or stopping "
                                                "(no token needed)",
                                     "responses": {"200": {"description": "ready"}, "503": {"description": "not ready"}}}},
        "/v2/openapi.json": {"get": {"summary": "This document", "responses": {"200": {"description": "OpenAPI 3"}}}},
    }
    for base, params in (("/v2/models/{model}", [model]), ("/v2/models/{model}/versions/{version}", [model, model_version])):
        paths[base] = {"get": {**metadata, "parameters": params}}
        paths[base + "/ready"] = {"get": {**ready, "parameters": params}}
        paths[base + "/infer"] = {"post": {**infer, "parameters": params + infer["parameters"]}}
    tensor = {"type": "object", "required": ["name", "datatype", "shape"], "properties": {
        "name": {"type": "string"}, "datatype": {"type": "string"},
        "shape": {"type": "array", "items": {"type": "integer"}},
        "parameters": {"type": "object", "properties": {"binary_data_size": {"type": "integer"}}},
        "data": {"type": "array", "description": "row-major elements, flat or nested; BYTES as strings"}}}
    return {
        "openapi": "3.0.3",
        "info": {"title": "featurizer: Open Inference Protocol (KServe v2) over HTTP", "version": version,
                 "description": f"Inputs (send exactly one): {IMAGES!r} BYTES [N] or [N,1] encoded images; "
                                f"{PIXELS!r} UINT8 [N,H,W,3]; {TENSOR!r} FP32 [N,3,H,W] preprocessed. Outputs: "
                                f"{EMBEDDINGS!r} FP32 (features models); {PROBABILITIES!r} FP32 [N,classes] and "
                                f"{LABELS!r} BYTES [N,k] (classifiers, heads). Request parameters: layer, pooling, "
                                f"normalize, top_k, decode (exact or fast; absent: the model's own), "
                                f"binary_data_output."},
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": {"type": "object", "properties": {"error": {"type": "string"}}},
                "Tensor": tensor,
                "InferRequest": {"type": "object", "required": ["inputs"], "properties": {
                    "id": {"type": "string"}, "parameters": {"type": "object"},
                    "inputs": {"type": "array", "items": {"$ref": "#/components/schemas/Tensor"}},
                    "outputs": {"type": "array", "items": {"type": "object", "properties": {
                        "name": {"type": "string"},
                        "parameters": {"type": "object", "properties": {"binary_data": {"type": "boolean"}}}}}}}},
                "InferResponse": {"type": "object", "properties": {
                    "model_name": {"type": "string"}, "model_version": {"type": "string"}, "id": {"type": "string"},
                    "outputs": {"type": "array", "items": {"$ref": "#/components/schemas/Tensor"}}}},
                "ModelMetadata": {"type": "object", "properties": {
                    "name": {"type": "string"}, "versions": {"type": "array", "items": {"type": "string"}},
                    "platform": {"type": "string"},
                    "inputs": {"type": "array", "items": {"$ref": "#/components/schemas/Tensor"}},
                    "outputs": {"type": "array", "items": {"$ref": "#/components/schemas/Tensor"}}}},
            }},
        "security": [{"bearer": []}],
        "paths": paths,
    }
