"""deploy/k8s: every manifest valid for Kubernetes, the KEDA ScaledObjects valid and in step with the code.

Offline: kubernetes-validate bundles the Kubernetes JSON schemas; KEDA's ScaledObject, a custom resource
it cannot know, is checked against tests/deploy/keda-scaledobject.schema.json, written from KEDA's CRD.
"""

from __future__ import annotations

import importlib.util
import json
import shlex
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from shared.config import Settings
from shared.contracts import catalog
from shared.messages import PIPELINE, PRIORITIES, Stage
from shared.wire import consumer_name, work_stream
from tests.deploy.manifests import (
    DEPLOY,
    HAND_BACK_S,
    K8S,
    NOT_SETTINGS,
    STAGE_MODULES,
    WORKER_MODULES,
    load_documents,
)

# A recent release among those kubernetes-validate bundles (pyproject pins a version that has it).
K8S_VERSION = "1.34.0"
NAMESPACE = "task-manager"
NOT_RESOURCES = {"kustomization.yaml", "secret.example.yaml"}
KEDA_SCHEMA = json.loads((Path(__file__).with_name("keda-scaledobject.schema.json")).read_text())


def manifests() -> list[tuple[str, dict[str, Any]]]:
    return [
        (path.name, doc)
        for path in sorted(K8S.glob("*.yaml"))
        if path.name != "kustomization.yaml"
        for doc in load_documents(path)
    ]


def ident(entry: tuple[str, dict[str, Any]]) -> str:
    name, doc = entry
    return f"{name}:{doc['kind']}/{doc['metadata']['name']}"


ALL = manifests()
BUILTIN = [entry for entry in ALL if entry[1]["apiVersion"] != "keda.sh/v1alpha1"]
SCALED_OBJECTS = [doc for _, doc in ALL if doc["kind"] == "ScaledObject"]
DEPLOYMENTS = {doc["metadata"]["name"]: doc for _, doc in ALL if doc["kind"] == "Deployment"}
CONFIG = next(doc["data"] for _, doc in ALL if doc["kind"] == "ConfigMap")


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def module_of(deployment: dict[str, Any]) -> str:
    command = container(deployment)["command"]
    assert command[:2] == ["python", "-m"], command
    return command[2]


def env_of(deployment: dict[str, Any]) -> dict[str, str]:
    """The TM_* values a container sees: the ConfigMap, then its own env on top."""
    own = {item["name"]: item["value"] for item in container(deployment).get("env", [])}
    return {**CONFIG, **own}


def load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("deploy_k8s_generate", K8S / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    on_disk = {path.name for path in K8S.glob("*.yaml")} - NOT_RESOURCES
    assert sorted(kustomization["resources"]) == sorted(on_disk)
    assert kustomization["namespace"] == NAMESPACE
    images = {image["name"] for image in kustomization["images"]}
    used = {container(d)["image"].split(":")[0] for d in DEPLOYMENTS.values()}
    assert used <= images


@pytest.mark.parametrize("entry", BUILTIN, ids=ident)
def test_kubernetes_schema(entry: tuple[str, dict[str, Any]]) -> None:
    """Strict: an unknown (misspelt) field fails, as `kubectl apply --validate=strict` would."""
    _, doc = entry
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


@pytest.mark.parametrize("doc", SCALED_OBJECTS, ids=lambda doc: doc["metadata"]["name"])
def test_scaled_object_schema(doc: dict[str, Any]) -> None:
    jsonschema.Draft202012Validator(KEDA_SCHEMA).validate(doc)


@pytest.mark.parametrize("doc", SCALED_OBJECTS, ids=lambda doc: doc["metadata"]["name"])
def test_scaled_object_hpa_is_valid(doc: dict[str, Any]) -> None:
    """KEDA hands `advanced.horizontalPodAutoscalerConfig.behavior` to the HPA it creates: check that HPA."""
    spec = doc["spec"]
    modifiers = spec["advanced"]["scalingModifiers"]
    hpa = {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": f"keda-hpa-{doc['metadata']['name']}"},
        "spec": {
            "scaleTargetRef": spec["scaleTargetRef"] | {"apiVersion": "apps/v1"},
            "minReplicas": spec["minReplicaCount"],
            "maxReplicas": spec["maxReplicaCount"],
            "metrics": [
                {
                    "type": "External",
                    "external": {
                        "metric": {"name": "composite-metric"},
                        "target": {"type": modifiers["metricType"], "averageValue": modifiers["target"]},
                    },
                }
            ],
            "behavior": spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"],
        },
    }
    kubernetes_validate.validate(hpa, K8S_VERSION, strict=True)


def test_every_stage_scales_on_its_consumer_in_every_priority_stream() -> None:
    by_stage: dict[Stage, dict[str, Any]] = {}
    for doc in SCALED_OBJECTS:
        target = doc["spec"]["scaleTargetRef"]
        assert target["kind"] == "Deployment" and target["name"] in DEPLOYMENTS
        module = module_of(DEPLOYMENTS[target["name"]])
        stage = next(Stage(s) for s, m in STAGE_MODULES.items() if m == module)
        by_stage[stage] = doc
        triggers = doc["spec"]["triggers"]
        pairs = {(t["metadata"]["stream"], t["metadata"]["consumer"]) for t in triggers}
        assert pairs == {(work_stream(p), consumer_name(stage)) for p in PRIORITIES}
        assert len(triggers) == len(PRIORITIES)
        for trigger in triggers:
            meta = trigger["metadata"]
            assert trigger["type"] == "nats-jetstream"
            assert meta["account"] == "$G"
            assert meta["natsServerMonitoringEndpoint"] == f"nats-headless.{NAMESPACE}.svc.cluster.local:8222"
            assert int(meta["lagThreshold"]) >= 1
        # The scaling modifier sums every trigger, each once.
        formula = doc["spec"]["advanced"]["scalingModifiers"]["formula"]
        assert sorted(formula.replace(" ", "").split("+")) == sorted(t["name"] for t in triggers)
        assert doc["spec"]["minReplicaCount"] >= 1, "a stage with no worker times its tasks out"
    assert set(by_stage) == set(PIPELINE)


def test_scaled_objects_are_generated() -> None:
    generator = load_generator()
    assert (K8S / "scaledobjects.yaml").read_text() == generator.render(), "run: python deploy/k8s/generate.py"


def test_every_service_runs() -> None:
    modules = {module_of(d) for d in DEPLOYMENTS.values()}
    assert modules == {"services.api", *WORKER_MODULES}
    services = [doc for _, doc in ALL if doc["kind"] == "Service"]
    assert [s["metadata"]["name"] for s in services] == ["api"]


@pytest.mark.parametrize("name", sorted(DEPLOYMENTS))
def test_pods_are_probed_and_unprivileged(name: str) -> None:
    deployment = DEPLOYMENTS[name]
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    main = container(deployment)
    assert "readinessProbe" in main and "livenessProbe" in main
    assert main["securityContext"]["allowPrivilegeEscalation"] is False
    if any(so["spec"]["scaleTargetRef"]["name"] == name for so in SCALED_OBJECTS):
        assert "replicas" not in deployment["spec"], "KEDA owns the replica count; a re-apply must not reset it"


@pytest.mark.parametrize("name", sorted(DEPLOYMENTS))
def test_grace_period_covers_the_drain(name: str) -> None:
    """SIGKILL must never come before the worker has finished (or handed back) the work it holds."""
    deployment = DEPLOYMENTS[name]
    pod = deployment["spec"]["template"]["spec"]
    pre_stop = container(deployment).get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command")
    pre_stop_s = float(pre_stop[1]) if pre_stop else 0.0
    if pre_stop:
        assert pre_stop[0] == "sleep"
    grace_s = float(env_of(deployment)["TM_SHUTDOWN_GRACE_S"])
    assert pod["terminationGracePeriodSeconds"] >= pre_stop_s + grace_s + HAND_BACK_S + 5


def test_upscaler_gets_a_gpu_and_scales_down_gently() -> None:
    upscaler = DEPLOYMENTS["upscaler"]
    resources = container(upscaler)["resources"]
    assert resources["requests"]["nvidia.com/gpu"] == 1 == resources["limits"]["nvidia.com/gpu"]
    assert env_of(upscaler)["TM_DEVICE"].startswith("cuda")
    grace = upscaler["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    scaled = next(so for so in SCALED_OBJECTS if so["spec"]["scaleTargetRef"]["name"] == "upscaler")
    down = scaled["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleDown"]
    assert all(policy["type"] == "Pods" and policy["value"] == 1 for policy in down["policies"])
    assert all(policy["periodSeconds"] >= grace for policy in down["policies"]), "one pod draining at a time"
    assert down["stabilizationWindowSeconds"] >= 300


def test_upscaler_init_downloads_official_models() -> None:
    init = DEPLOYMENTS["upscaler"]["spec"]["template"]["spec"]["initContainers"][0]
    script = init["command"][-1]
    assert "task-manager models download" in script
    names = shlex.split(script.split(" in ", 1)[1].split(";", 1)[0])
    assert names and set(names) <= set(catalog.MODELS)


def test_settings_in_manifests_are_real_and_valid(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every TM_* name set is a Settings field (no typo silently ignored) and its value validates."""
    fields = {name.upper() for name in Settings.model_fields}
    for deployment in DEPLOYMENTS.values():
        env = env_of(deployment)
        unknown = {k for k in env if k.startswith("TM_") and k.removeprefix("TM_") not in fields} - NOT_SETTINGS
        assert not unknown, f"{deployment['metadata']['name']}: not settings: {unknown}"
        with monkeypatch.context() as patch:
            for key, value in env.items():
                patch.setenv(key, value)
            Settings()


def test_nats_helm_values_match() -> None:
    """One place for the NATS cluster: deploy/nats-cluster/helm-values.yaml, as the manifests expect it."""
    values = yaml.safe_load((DEPLOY / "nats-cluster" / "helm-values.yaml").read_text())
    config = values["config"]
    assert config["jetstream"]["enabled"] and config["jetstream"]["fileStore"]["enabled"]
    assert config["cluster"]["enabled"] and config["cluster"]["replicas"] == 3 == int(CONFIG["TM_REPLICAS"])
    assert config["monitor"]["enabled"] and config["monitor"]["port"] == 8222
    assert CONFIG["NATS_URL"] == "nats://nats:4222"  # the chart's client Service for release "nats"
