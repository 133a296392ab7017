"""deploy/kserve renders with ``kubectl kustomize`` into a ServingRuntime + InferenceService that
KServe can run featurizer with: the runtime's args are real ``featurizer serve`` flags, its
ports and probes are the ports those flags open, and the InferenceService selects it over v2.

KServe's CRDs are not in the Kubernetes schemas, so their own fields are checked against the
field names of KServe's API types, and the pod parts they carry (containers, volumes, the pod's
security context) are assembled into a Pod and validated strictly against Kubernetes' schema.
"""

from __future__ import annotations

import copy
import shlex
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from featurizer.settings import parse_settings

ROOT = Path(__file__).resolve().parents[2]
K8S_VERSION = "1.30.0"  # as tests/integration/test_deploy.py
MODEL_DIR = "/mnt/models"  # where KServe mounts an InferenceService's storageUri
# Field names of KServe's serving.kserve.io API types (ServingRuntimeSpec with its inlined pod
# spec; the predictor's component extension; the model spec), beside the Kubernetes ones.
RUNTIME_FIELDS = {"supportedModelFormats", "multiModel", "disabled", "protocolVersions", "grpcEndpoint",
                  "grpcDataEndpoint", "httpDataEndpoint", "replicas", "storageHelper", "builtInAdapter",
                  "workerSpec", "containers", "volumes", "nodeSelector", "affinity", "tolerations", "labels",
                  "annotations", "imagePullSecrets", "schedulerName", "hostIPC", "dnsPolicy", "hostNetwork"}
RUNTIME_POD_FIELDS = {"containers", "volumes", "nodeSelector", "affinity", "tolerations", "imagePullSecrets",
                      "schedulerName", "hostIPC", "dnsPolicy", "hostNetwork"}
COMPONENT_FIELDS = {"model", "minReplicas", "maxReplicas", "scaleTarget", "scaleMetric", "scaleMetricType",
                    "containerConcurrency", "timeout", "canaryTrafficPercent", "logger", "batcher", "labels",
                    "annotations", "deploymentStrategy", "autoScaling", "workerSpec"}
MODEL_FIELDS = {"modelFormat", "runtime", "protocolVersion", "storageUri", "storage", "runtimeVersion",
                "resources", "env", "args", "ports"}
PROTOCOLS = {"v1", "v2", "grpc-v1", "grpc-v2"}


def render(path: str) -> list[dict]:
    args = ("kubectl", "kustomize", str(ROOT / path))
    done = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"{shlex.join(args)} failed:\n{done.stderr}"
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def one(objects: list[dict], kind: str) -> dict:
    (found,) = [o for o in objects if o["kind"] == kind]
    return found


@pytest.fixture(scope="module")
def objects() -> list[dict]:
    return render("deploy/kserve")


@pytest.fixture(scope="module")
def runtime(objects) -> dict:
    return one(objects, "ServingRuntime")


@pytest.fixture(scope="module")
def service(objects) -> dict:
    return one(objects, "InferenceService")


def container_of(runtime: dict) -> dict:
    (container,) = runtime["spec"]["containers"]
    return container


def predictor_pod(runtime: dict, service: dict) -> dict:
    """The pod KServe builds for the predictor: the runtime's pod parts, the predictor's pod
    fields, and the registry claim mounted read-only at /mnt/models."""
    predictor = service["spec"]["predictor"]
    spec = {k: copy.deepcopy(v) for k, v in runtime["spec"].items() if k in RUNTIME_POD_FIELDS}
    spec.update({k: copy.deepcopy(v) for k, v in predictor.items() if k not in COMPONENT_FIELDS})
    claim = predictor["model"]["storageUri"].removeprefix("pvc://").split("/")[0]
    spec["volumes"].append({"name": "kserve-pvc-source", "persistentVolumeClaim": {"claimName": claim, "readOnly": True}})
    spec["containers"][0].setdefault("volumeMounts", []).append(
        {"name": "kserve-pvc-source", "mountPath": MODEL_DIR, "readOnly": True})
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "featurizer-predictor"}, "spec": spec}


def test_renders_a_runtime_a_service_and_the_registry_claim(objects, runtime, service):
    assert sorted(o["kind"] for o in objects) == ["InferenceService", "PersistentVolumeClaim", "ServingRuntime"]
    assert runtime["apiVersion"] == "serving.kserve.io/v1alpha1"
    assert service["apiVersion"] == "serving.kserve.io/v1beta1"
    assert set(runtime["spec"]) <= RUNTIME_FIELDS, set(runtime["spec"]) - RUNTIME_FIELDS
    predictor = service["spec"]["predictor"]
    assert set(predictor["model"]) <= MODEL_FIELDS, set(predictor["model"]) - MODEL_FIELDS
    kubernetes_validate.validate(one(objects, "PersistentVolumeClaim"), K8S_VERSION, strict=True)
    # the same claim as the plain Kubernetes layout: one registry, whichever way it is served
    base_claim = one(render("deploy/k8s/base"), "PersistentVolumeClaim")
    assert one(objects, "PersistentVolumeClaim")["spec"] == base_claim["spec"]
    assert one(objects, "PersistentVolumeClaim")["metadata"]["name"] == base_claim["metadata"]["name"]


def test_the_predictor_pod_validates_against_the_kubernetes_schema(runtime, service):
    pod = predictor_pod(runtime, service)
    kubernetes_validate.validate(pod, K8S_VERSION, strict=True)
    broken = copy.deepcopy(pod)
    broken["spec"]["containers"][0]["readinesProbe"] = {"grpc": {"port": 8081}}  # a typo must fail
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)
    security = pod["spec"]["securityContext"]
    assert security["runAsNonRoot"] and security["runAsUser"] != 0
    container = pod["spec"]["containers"][0]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert container["resources"]["requests"] and container["resources"]["limits"]


def test_runtime_args_are_featurizer_flags_and_its_ports_are_the_ones_they_open(runtime):
    container = container_of(runtime)
    assert container["name"] == "kserve-container"  # the name KServe merges the predictor's model into
    assert container["image"] == "featurizer:0.1.0"  # the Dockerfile's image, whose entrypoint is `featurizer`
    command, *flags = container["args"]
    assert command == "serve"
    settings = parse_settings(flags, env={})  # every arg is a real flag with a valid value
    assert str(settings.registry) == MODEL_DIR and settings.host == "0.0.0.0"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    # KServe's Service sends port 80 to the first container port: the v2 REST port
    assert container["ports"][0]["containerPort"] == settings.http_port == ports["http"]
    assert ports["grpc"] == settings.port  # featurizer.v1 and inference.GRPCInferenceService
    assert ports["metrics"] == settings.metrics_port == int(runtime["spec"]["annotations"]["prometheus.kserve.io/port"])
    assert runtime["spec"]["annotations"]["prometheus.kserve.io/path"] == "/metrics"
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"]["port"] == settings.port, probe  # grpc.health.v1


def test_the_service_selects_the_runtime_over_v2_and_drains_within_its_grace(runtime, service, objects):
    predictor = service["spec"]["predictor"]
    model = predictor["model"]
    assert model["runtime"] == runtime["metadata"]["name"]
    assert model["modelFormat"]["name"] in {f["name"] for f in runtime["spec"]["supportedModelFormats"]}
    assert model["protocolVersion"] == "v2"
    assert {"v2", "grpc-v2"} <= set(runtime["spec"]["protocolVersions"]) <= PROTOCOLS
    assert model["storageUri"] == "pvc://" + one(objects, "PersistentVolumeClaim")["metadata"]["name"]
    # Knative (Serverless mode) allows one container port; the runtime exposes HTTP and gRPC
    assert service["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "RawDeployment"
    assert 1 <= predictor["minReplicas"] <= predictor["maxReplicas"]
    container = container_of(runtime)
    settings = parse_settings(container["args"][1:], env={})
    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    assert predictor["terminationGracePeriodSeconds"] >= int(pre_stop[1]) + settings.grace_seconds
