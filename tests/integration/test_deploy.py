"""The deployment files are checked by the tools that will read them.

Prometheus config and alerts by ``promtool`` (alerts also by their own unit tests), compose by
Debian's ``docker-compose config``, the Grafana dashboard and alerts against a live server's
registry, the Kubernetes manifests by ``kubectl kustomize`` + the Kubernetes JSON schemas
(``kubernetes-validate``, offline). There is no Docker engine here: images are not built.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import re
import shlex
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from featurizer.settings import ENV_PREFIX, Settings, parse_settings
from tests.support.registries import publish_largenet
from tests.support.scripts import SYSTEM_PATH, console_script
from tests.support.servers import ServerThread, running_server

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S_VERSION = "1.30.0"  # oldest Kubernetes we support; grpc probes are GA since 1.27
METRIC = re.compile(r"\b(?:featurizer|process|python)_[a-z_]+\b")


def run(*args: str, cwd: Path = ROOT) -> str:
    done = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"{shlex.join(args)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


# ----- Prometheus ---------------------------------------------------------------------------

def test_promtool_accepts_config_and_rules_and_every_alert_fires_in_its_unit_test():
    prometheus = DEPLOY / "prometheus"
    assert "SUCCESS: 7 rules found" in run("promtool", "check", "rules", "alerts.yml", cwd=prometheus)
    assert "SUCCESS: 1 rule files found" in run("promtool", "check", "config", "prometheus.yml", cwd=prometheus)
    run("promtool", "test", "rules", "alerts_test.yml", cwd=prometheus)
    tested = {case["alertname"] for group in yaml.safe_load((prometheus / "alerts_test.yml").read_text())["tests"]
              for case in group["alert_rule_test"]}
    assert tested == set(alert_rules())  # no alert without a test that makes it fire


def alert_rules() -> dict[str, str]:
    groups = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())["groups"]
    return {rule["alert"]: rule["expr"] for group in groups for rule in group["rules"]}


def test_alerts_cover_down_errors_latency_saturation_and_model_failures():
    exprs = alert_rules()
    assert any("featurizer_requests_total" in e and "/" in e for e in exprs.values())  # error ratio
    assert any("histogram_quantile(0.99" in e for e in exprs.values())  # p99 latency
    assert any("featurizer_queue_depth" in e for e in exprs.values())  # queue saturation
    assert any("featurizer_model_load_failures_total" in e for e in exprs.values())


# ----- metric names in the dashboard and alerts ---------------------------------------------

SUFFIXES = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_count", "_sum", "_created"),
            "info": ("_info",), "gauge": ("",), "summary": ("_count", "_sum", "_created")}


def exported_names(registry) -> set[str]:
    """Every sample name the registry exports, including families with no labelled child yet."""
    names = set()
    for family in registry.collect():
        names.update(family.name + suffix for suffix in SUFFIXES.get(family.type, ("",)))
        names.update(sample.name for sample in family.samples)
    return names


def dashboard() -> dict:
    return json.loads((DEPLOY / "grafana" / "dashboards" / "featurizer.json").read_text())


def dashboard_queries(board: dict) -> list[str]:
    queries = [t["expr"] for panel in board["panels"] for t in panel.get("targets", ())]
    queries += [v["query"]["query"] for v in board["templating"]["list"] if v["type"] == "query"]
    return queries


@pytest.fixture(scope="module")
def live_server(tmp_path_factory):
    """A real server on a one-LargeNet registry: the metric families do not depend on the models."""
    root = tmp_path_factory.mktemp("deploy-registry")
    publish_largenet(root, "largenet")
    with running_server(root) as server:
        yield server


def test_dashboard_and_alerts_name_only_metrics_a_live_server_exports(live_server):
    exported = exported_names(live_server.metrics)
    assert "featurizer_dropped_total" in exported and "featurizer_no_such_metric" not in exported
    queries = dashboard_queries(dashboard())
    used = {name for q in queries for name in METRIC.findall(q)}
    assert used - exported == set(), f"dashboard queries unknown metrics: {sorted(used - exported)}"
    alerted = {name for e in alert_rules().values() for name in METRIC.findall(e)}
    assert alerted - exported == set(), f"alerts use unknown metrics: {sorted(alerted - exported)}"


def test_dashboard_shows_traffic_latency_batching_and_models():
    board = dashboard()
    queries = " ".join(dashboard_queries(board))
    for wanted in ("sum by (code) (rate(featurizer_requests_total", "featurizer_images_total",
                   "featurizer_batch_size_bucket", "featurizer_queue_depth", "featurizer_dropped_total",
                   "featurizer_model_state"):
        assert wanted in queries, wanted
    for quantile in ("0.5", "0.95", "0.99"):
        assert f"histogram_quantile({quantile}, sum by (le) (rate(featurizer_request_duration_seconds_bucket" in queries
    # panels read the datasource variable, which the provisioned default Prometheus fills
    datasource = yaml.safe_load((DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text())
    assert [d["type"] for d in datasource["datasources"] if d.get("isDefault")] == ["prometheus"]
    assert {p["datasource"]["uid"] for p in board["panels"]} == {"${datasource}"}


# ----- Docker and compose -------------------------------------------------------------------

def compose_config(*files: str) -> dict:
    args = ["docker-compose"] + [a for f in files for a in ("-f", f)] + ["config"]
    return yaml.safe_load(run(*args))


def test_compose_stack_renders_with_health_check_registry_volume_and_gpu_variant():
    stack = compose_config("docker-compose.yml")
    assert {"featurizer", "prometheus", "grafana"} <= set(stack["services"])
    server = stack["services"]["featurizer"]
    assert server["healthcheck"]["test"] == dockerfile_healthcheck()
    assert volumes(server)["/registry"] == ("registry", "ro")  # read-only: replicas never write it
    assert volumes(stack["services"]["registry-init"])["/registry"] == ("registry", "rw")
    assert Path(volumes(stack["services"]["prometheus"])["/etc/prometheus"][0]) == DEPLOY / "prometheus"
    grafana = volumes(stack["services"]["grafana"])
    assert Path(grafana["/etc/grafana/provisioning"][0]) == DEPLOY / "grafana" / "provisioning"

    gpu = compose_config("docker-compose.yml", "deploy/compose/docker-compose.gpu.yml")["services"]["featurizer"]
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    assert gpu["environment"]["FEATURIZER_DEVICE"] == "cuda" and server["environment"]["FEATURIZER_DEVICE"] == "cpu"


def volumes(service: dict) -> dict[str, tuple[str, str]]:
    """Mount target -> (source, mode) from docker-compose 1.x's short syntax."""
    parts = [v.split(":") for v in service["volumes"]]
    return {p[1]: (p[0], p[2] if len(p) > 2 else "rw") for p in parts}


def dockerfile() -> str:
    return (ROOT / "Dockerfile").read_text()


def dockerfile_healthcheck() -> list[str]:
    match = re.search(r"HEALTHCHECK[^\n]*\\\n\s*CMD (\[.*\])", dockerfile())
    assert match, "Dockerfile has no exec-form HEALTHCHECK"
    return ["CMD", *json.loads(match.group(1))]


def test_dockerfile_is_non_root_pins_the_project_torch_and_checks_grpc_health():
    text = dockerfile()
    assert text.splitlines()[[i for i, line in enumerate(text.splitlines()) if line.startswith("FROM")][0]] \
        == "FROM python:3.11-slim"
    users = re.findall(r"^USER (\S+)", text, re.M)
    assert users and users[-1] not in ("root", "0")
    torch_pins = re.search(r"^TORCH\s*\?=\s*(.+)$", (ROOT / "Makefile").read_text(), re.M).group(1).strip()
    assert f'ARG TORCH_PACKAGES="{torch_pins}"' in text  # the image runs the torch the tests ran
    assert dockerfile_healthcheck()[1:3] == ["featurizer-client", "health"]
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".git", ".venv", "*.safetensors"} <= set(ignored)


def test_the_image_health_check_command_follows_grpc_health(live_server, tmp_path):
    """The HEALTHCHECK command, pointed at a real server: 0 when SERVING, 1 before models load."""
    def image_command(target: str) -> list[str]:
        # The image puts its venv's scripts on PATH; here the program comes from the test venv and
        # PATH holds only system directories, so a copy installed elsewhere cannot stand in for it.
        program, *args = dockerfile_healthcheck()[1:]
        return [str(console_script(program)), *(word.replace("127.0.0.1:50051", target) for word in args)]

    def run_check(target: str) -> int:
        return subprocess.run(image_command(target), capture_output=True, timeout=60,
                              env={**os.environ, "PATH": SYSTEM_PATH}).returncode

    assert run_check(live_server.target) == 0
    publish_largenet(tmp_path, "largenet")
    loading = ServerThread(tmp_path, load=False)
    try:
        assert run_check(loading.target) == 1
    finally:
        loading.stop()


# ----- Kubernetes ---------------------------------------------------------------------------

def render(kustomization: str) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(run("kubectl", "kustomize", str(DEPLOY / "k8s" / kustomization))) if doc]


def by_kind(objects: list[dict], kind: str) -> list[dict]:
    return [o for o in objects if o["kind"] == kind]


@pytest.fixture(scope="module", params=["base", "overlays/gpu"])
def rendered(request) -> tuple[str, list[dict]]:
    return request.param, render(request.param)


def test_rendered_objects_validate_against_the_kubernetes_schemas(rendered):
    _, objects = rendered
    assert {o["kind"] for o in objects} == {"ConfigMap", "Service", "PersistentVolumeClaim", "Deployment",
                                            "PodDisruptionBudget", "HorizontalPodAutoscaler", "ServiceMonitor"}
    for obj in objects:
        if obj["kind"] == "ServiceMonitor":
            continue  # a CRD: its schema is not in Kubernetes' own; checked by the next test
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    broken = copy.deepcopy(by_kind(objects, "Deployment")[0])
    broken["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {"grpc": {"port": 50051}}  # a typo
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


def test_service_monitor_scrapes_the_clusterip_service_metrics_port(rendered):
    _, objects = rendered
    monitor = by_kind(objects, "ServiceMonitor")[0]
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    wanted = monitor["spec"]["selector"]["matchLabels"]
    selected = [s for s in by_kind(objects, "Service") if wanted.items() <= s["metadata"]["labels"].items()]
    assert [s["metadata"]["name"] for s in selected] == ["featurizer"]  # not the headless one too
    port_names = {p["name"] for p in selected[0]["spec"]["ports"]}
    assert {e["port"] for e in monitor["spec"]["endpoints"]} <= port_names


def settings_of(objects: list[dict]) -> dict[str, str]:
    return by_kind(objects, "ConfigMap")[0]["data"]


def test_config_map_holds_real_featurizer_settings(rendered):
    data = settings_of(rendered[1])
    fields = {f.name for f in dataclasses.fields(Settings)}
    assert {key.removeprefix(ENV_PREFIX).lower() for key in data} <= fields
    settings = parse_settings([], env=data)
    assert str(settings.registry) == "/registry" and settings.host == "0.0.0.0"


def test_deployment_is_locked_down_probed_over_grpc_and_drains_within_its_grace(rendered):
    name, objects = rendered
    deployment = by_kind(objects, "Deployment")[0]
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    data = settings_of(objects)
    assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["runAsUser"] != 0
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["resources"]["requests"] and container["resources"]["limits"]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"]["port"] == int(data["FEATURIZER_PORT"]), probe
    assert container["envFrom"][0]["configMapRef"]["name"] == by_kind(objects, "ConfigMap")[0]["metadata"]["name"]
    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    assert pod["terminationGracePeriodSeconds"] >= int(pre_stop[1]) + float(data["FEATURIZER_GRACE_SECONDS"])
    claim = next(v for v in pod["volumes"] if v["name"] == "registry")["persistentVolumeClaim"]
    pvc = next(p for p in by_kind(objects, "PersistentVolumeClaim") if p["metadata"]["name"] == claim["claimName"])
    assert pvc["spec"]["accessModes"] == ["ReadOnlyMany"] and claim["readOnly"] is True
    headless = next(s for s in by_kind(objects, "Service") if s["metadata"]["name"] == "featurizer-headless")
    assert headless["spec"]["clusterIP"] == "None"
    assert headless["spec"]["selector"].items() <= pod_labels(deployment).items()
    assert by_kind(objects, "HorizontalPodAutoscaler")[0]["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    assert by_kind(objects, "PodDisruptionBudget")[0]["spec"]["selector"]["matchLabels"].items() <= pod_labels(deployment).items()

    gpus = container["resources"]["limits"].get("nvidia.com/gpu")
    if name == "overlays/gpu":
        assert gpus == 1 and container["args"][-2:] == ["--device", "cuda"] and data["FEATURIZER_DEVICE"] == "cuda"
        assert pod["nodeSelector"] and pod["tolerations"][0]["key"] == "nvidia.com/gpu"
    else:
        assert gpus is None and data["FEATURIZER_DEVICE"] == "cpu" and "--device" not in container["args"]


def pod_labels(deployment: dict) -> dict:
    return deployment["spec"]["template"]["metadata"]["labels"]
