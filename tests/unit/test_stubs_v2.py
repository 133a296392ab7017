"""The Open Inference Protocol stubs match their .proto, and the proto matches the protocol's wire."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from featurizer_client.v2 import grpc_predict_v2_pb2 as v2

ROOT = Path(__file__).resolve().parents[2]


def _generator():
    spec = importlib.util.spec_from_file_location("generate_v2", ROOT / "protos" / "generate_v2.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_v2_stubs_are_fresh(tmp_path):
    generate = _generator()
    generate.generate(tmp_path)
    committed = ROOT / "client" / "featurizer_client" / "v2"
    stale = [name for name in generate.GENERATED
             if (tmp_path / name).read_text() != (committed / name).read_text()]
    assert not stale, f"v2 stubs are stale against the .proto; run `python protos/generate_v2.py` ({stale})"


def test_wire_names_and_field_numbers_are_the_protocols():
    """What tritonclient and KServe put on the wire: package, method paths and field numbers."""
    service = v2.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    assert service.full_name == "inference.GRPCInferenceService"
    assert {m.name for m in service.methods} == {"ServerLive", "ServerReady", "ModelReady", "ServerMetadata",
                                                  "ModelMetadata", "ModelInfer"}
    numbers = {d.full_name: {f.name: f.number for f in d.fields} for d in (
        v2.ModelInferRequest.DESCRIPTOR, v2.ModelInferRequest.InferInputTensor.DESCRIPTOR,
        v2.ModelInferResponse.DESCRIPTOR, v2.InferParameter.DESCRIPTOR, v2.InferTensorContents.DESCRIPTOR,
        v2.ModelMetadataResponse.DESCRIPTOR)}
    assert numbers["inference.ModelInferRequest"] == {
        "model_name": 1, "model_version": 2, "id": 3, "parameters": 4, "inputs": 5, "outputs": 6,
        "raw_input_contents": 7}
    assert numbers["inference.ModelInferRequest.InferInputTensor"] == {
        "name": 1, "datatype": 2, "shape": 3, "parameters": 4, "contents": 5}
    assert numbers["inference.ModelInferResponse"] == {
        "model_name": 1, "model_version": 2, "id": 3, "parameters": 4, "outputs": 5, "raw_output_contents": 6}
    assert numbers["inference.InferParameter"] == {
        "bool_param": 1, "int64_param": 2, "string_param": 3, "double_param": 4, "uint64_param": 5}
    assert numbers["inference.InferTensorContents"]["fp32_contents"] == 6
    assert numbers["inference.InferTensorContents"]["bytes_contents"] == 8
    assert numbers["inference.ModelMetadataResponse"] == {
        "name": 1, "versions": 2, "platform": 3, "inputs": 4, "outputs": 5}


def test_the_client_package_does_not_import_v2():
    """tritonclient registers the same protobuf package; featurizer_client must not pull v2 in."""
    import subprocess
    import sys

    code = "import sys, featurizer_client; print('featurizer_client.v2' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
