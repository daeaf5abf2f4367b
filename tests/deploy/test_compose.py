"""deploy/docker-compose.yml (and the CPU-only override): valid Compose, complete, scalable, draining.

The files are checked against the Compose Specification's JSON schema as check-jsonschema vendors it
(the one `check-jsonschema --builtin-schema vendor.compose-spec` uses), offline.
"""

from __future__ import annotations

import json
import shlex
from importlib import resources
from typing import Any

import jsonschema
import pytest

from shared.config import Settings
from shared.contracts import catalog
from tests.deploy.manifests import (
    HAND_BACK_S,
    NOT_SETTINGS,
    STAGE_MODULES,
    Reset,
    duration_s,
    load_compose,
)

COMPOSE = load_compose("docker-compose.yml")
CPU = load_compose("docker-compose.cpu.yml")
SERVICES = COMPOSE["services"]
SCALABLE = ["fetcher", "classifier", "upscaler", "uploader", "notifier"]


def compose_schema() -> dict[str, Any]:
    vendored = resources.files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json"
    return json.loads(vendored.read_text())


@pytest.mark.parametrize("name", ["docker-compose.yml", "docker-compose.cpu.yml"])
def test_compose_schema(name: str) -> None:
    jsonschema.Draft202012Validator(compose_schema()).validate(load_compose(name))


def test_every_service_is_there() -> None:
    assert {"nats", "s3", "s3-init", "models", "api", *SCALABLE} <= set(SERVICES)
    modules = {name: SERVICES[name]["command"] for name in ["api", *SCALABLE]}
    for name, command in modules.items():
        assert command == ["python", "-m", f"services.{name}"]
    assert {f"services.{name}" for name in SCALABLE} >= set(STAGE_MODULES.values())


@pytest.mark.parametrize("name", SCALABLE)
def test_scalable_services_scale(name: str) -> None:
    """`docker compose up --scale NAME=N` needs no fixed container name and no fixed host port."""
    service = SERVICES[name]
    assert "container_name" not in service
    assert "ports" not in service
    assert service["depends_on"]["nats"]["condition"] == "service_healthy"


@pytest.mark.parametrize("name", ["api", *SCALABLE])
def test_stop_grace_covers_the_drain(name: str) -> None:
    service = SERVICES[name]
    default_s = Settings.model_fields["shutdown_grace_s"].default
    grace_s = float(service["environment"].get("TM_SHUTDOWN_GRACE_S", default_s))
    assert duration_s(service["stop_grace_period"]) >= grace_s + HAND_BACK_S


def test_upscaler_reserves_a_gpu() -> None:
    upscaler = SERVICES["upscaler"]
    devices = upscaler["deploy"]["resources"]["reservations"]["devices"]
    assert any(d["driver"] == "nvidia" and "gpu" in d["capabilities"] for d in devices)
    assert upscaler["build"]["dockerfile"] == "Dockerfile.cuda"
    assert upscaler["depends_on"]["models"]["condition"] == "service_completed_successfully"
    assert duration_s(upscaler["stop_grace_period"]) >= float(upscaler["environment"]["TM_SHUTDOWN_GRACE_S"]) + 20


def test_cpu_override_drops_the_gpu() -> None:
    upscaler = CPU["services"]["upscaler"]
    devices = upscaler["deploy"]["resources"]["reservations"]["devices"]
    assert isinstance(devices, Reset) and devices == []
    assert upscaler["build"]["dockerfile"] == "Dockerfile"
    assert upscaler["environment"]["TM_DEVICE"] == "cpu"


def test_nats_keeps_jetstream_on_a_volume() -> None:
    nats = SERVICES["nats"]
    assert "--jetstream" in nats["command"]
    store = next(arg.split("=", 1)[1] for arg in nats["command"] if arg.startswith("--store_dir="))
    assert f"nats-data:{store}" in nats["volumes"] and "nats-data" in COMPOSE["volumes"]
    assert "--http_port=8222" in nats["command"]
    assert "8222/healthz" in " ".join(nats["healthcheck"]["test"])


def test_models_are_downloaded_into_the_shared_volume() -> None:
    models = SERVICES["models"]
    assert "task-manager models download" in models["command"][-1]
    names = shlex.split(models["environment"]["TM_MODELS"].split(":-", 1)[1].rstrip("}"))
    assert names and set(names) <= set(catalog.MODELS)
    assert "models:/models" in models["volumes"]
    assert "models:/models:ro" in SERVICES["upscaler"]["volumes"]


def test_environment_names_are_settings() -> None:
    fields = {name.upper() for name in Settings.model_fields}
    for name, service in SERVICES.items():
        for key in service.get("environment", {}):
            if key.startswith("TM_"):
                assert key.removeprefix("TM_") in fields or key in NOT_SETTINGS, f"{name}: {key} is not a setting"
