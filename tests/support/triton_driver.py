"""Runs under the tritonclient venv's python (never imported by the tests): tritonclient.grpc or
tritonclient.http, from PyPI, calls a featurizer server as it would call Triton.

    python triton_driver.py PLAN.json     ->  one JSON object on stdout: {"results": [...]}

PLAN: {"protocol": "grpc"|"http", "url": "127.0.0.1:PORT", "token": optional, "calls": [CALL...]}
CALL: {"op": "live"|"ready"|"server_metadata"} | {"op": "model_ready"|"model_metadata", "model", "version"}
    | {"op": "infer", "model", "version", "inputs": [INPUT], "outputs": [names], "parameters", "save"}
    | {"op": "infer_concurrently", "requests": [infer CALL...]}   (all sent at once: async_infer)
INPUT: {"name", "datatype", "npy": path} or {"name", "datatype": "BYTES", "files": [paths], "shape"}
Each result: {"ok": ...} or {"error": {"status": str, "message": str}}. Numeric outputs are saved
as SAVE_<name>.npy; BYTES outputs come back in the JSON as strings.
"""

from __future__ import annotations

import json
import queue
import sys
from pathlib import Path

import numpy as np
from tritonclient.utils import InferenceServerException


def _client(plan):
    if plan["protocol"] == "grpc":
        import tritonclient.grpc as tc
        return tc, tc.InferenceServerClient(plan["url"])
    import tritonclient.http as tc
    return tc, tc.InferenceServerClient(plan["url"], concurrency=32, network_timeout=120, connection_timeout=60)


def _inputs(tc, specs):
    out = []
    for spec in specs:
        if "files" in spec:
            data = np.array([Path(f).read_bytes() for f in spec["files"]], dtype=np.object_)
            data = data.reshape(spec.get("shape", [len(spec["files"])]))
        else:
            data = np.load(spec["npy"])
        tensor = tc.InferInput(spec["name"], list(data.shape), spec["datatype"])
        tensor.set_data_from_numpy(data)
        out.append(tensor)
    return out


def _outputs(tc, names, protocol):
    if names is None:
        return None
    if protocol == "http":
        return [tc.InferRequestedOutput(n, binary_data=True) for n in names]
    return [tc.InferRequestedOutput(n) for n in names]


def _result(result, call):
    answer = result.get_response()
    if not isinstance(answer, dict):  # grpc: a protobuf message
        outputs = [o.name for o in answer.outputs]
        model, version = answer.model_name, answer.model_version
    else:
        outputs = [o["name"] for o in answer["outputs"]]
        model, version = answer["model_name"], answer["model_version"]
    summary = {"model": model, "version": version, "outputs": {}}
    for name in outputs:
        array = result.as_numpy(name)
        if array.dtype == np.object_:
            summary["outputs"][name] = [[v.decode() if isinstance(v, bytes) else str(v) for v in row]
                                        for row in array.reshape(array.shape[0], -1)]
        else:
            np.save(f"{call['save']}_{name}.npy", array)
            summary["outputs"][name] = list(array.shape)
    return summary


def _infer_args(tc, call, protocol):
    return dict(model_name=call["model"], inputs=_inputs(tc, call["inputs"]), model_version=call.get("version", ""),
                outputs=_outputs(tc, call.get("outputs"), protocol), parameters=call.get("parameters"))


def _error(error: InferenceServerException) -> dict:
    return {"error": {"status": str(error.status()), "message": error.message()}}


def run(plan) -> list:
    tc, client = _client(plan)
    # gRPC metadata keys are lowercase; HTTP header names are not case-sensitive.
    headers = {"authorization": f"Bearer {plan['token']}"} if plan.get("token") else None
    results = []
    for call in plan["calls"]:
        op = call["op"]
        try:
            if op == "live":
                results.append({"ok": client.is_server_live(headers=headers)})
            elif op == "ready":
                results.append({"ok": client.is_server_ready(headers=headers)})
            elif op == "server_metadata":
                results.append({"ok": _plain(client.get_server_metadata(headers=headers, **_as_json(plan)))})
            elif op == "model_ready":
                results.append({"ok": client.is_model_ready(call["model"], call.get("version", ""), headers=headers)})
            elif op == "model_metadata":
                results.append({"ok": _plain(client.get_model_metadata(call["model"], call.get("version", ""),
                                                                       headers=headers, **_as_json(plan)))})
            elif op == "infer":
                results.append({"ok": _result(client.infer(headers=headers, **_infer_args(tc, call, plan["protocol"])),
                                              call)})
            elif op == "infer_concurrently":
                results.append({"ok": _concurrently(tc, client, call["requests"], plan["protocol"], headers)})
            else:
                raise SystemExit(f"unknown op {op!r}")
        except InferenceServerException as error:
            results.append(_error(error))
    client.close()
    return results


def _concurrently(tc, client, calls, protocol, headers) -> list:
    """Every request in flight at once (the server should batch them), answers in request order."""
    if protocol == "http":
        pending = [client.async_infer(headers=headers, **_infer_args(tc, call, protocol)) for call in calls]
        return [_one(lambda p=p: p.get_result(), call) for p, call in zip(pending, calls)]
    done: queue.Queue = queue.Queue()
    for i, call in enumerate(calls):
        client.async_infer(callback=lambda result, error, i=i: done.put((i, result, error)), headers=headers,
                           **_infer_args(tc, call, protocol))
    answers = [None] * len(calls)
    for _ in calls:
        i, result, error = done.get(timeout=120)
        answers[i] = _error(error) if error is not None else {"ok": _result(result, calls[i])}
    return answers


def _one(get, call) -> dict:
    try:
        return {"ok": _result(get(), call)}
    except InferenceServerException as error:
        return _error(error)


def _as_json(plan) -> dict:
    return {"as_json": True} if plan["protocol"] == "grpc" else {}


def _plain(value):
    return json.loads(json.dumps(value, default=str))


if __name__ == "__main__":
    print(json.dumps({"results": run(json.loads(Path(sys.argv[1]).read_text()))}))
