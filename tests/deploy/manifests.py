"""Loading the deployment files for the tests: YAML with Compose's merge tags, and name helpers."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"

# Stage services and the module each runs; the notifier is not a pipeline stage.
STAGE_MODULES = {
    "fetch": "services.fetcher",
    "classify": "services.classifier",
    "upscale": "services.upscaler",
    "upload": "services.uploader",
}
WORKER_MODULES = (*STAGE_MODULES.values(), "services.notifier")
HAND_BACK_S = 10  # shared/runtime/stage.py: after the grace period, unfinished work gets this long to be nak'ed
# Variables the deployment files set that are not Settings fields: read by their own scripts (the
# compose bucket and model-download one-shots).
NOT_SETTINGS = {"TM_S3_BUCKET", "TM_MODELS", "TM_MODELS_MIRROR"}


class Reset(list[Any]):
    """A sequence tagged `!reset` (Compose: drop what the base file set)."""


class ComposeLoader(yaml.SafeLoader):
    """SafeLoader that accepts Compose's `!reset` and `!override` merge tags."""


def _reset(loader: yaml.SafeLoader, node: yaml.Node) -> Any:
    if isinstance(node, yaml.SequenceNode):
        return Reset(loader.construct_sequence(node))
    if isinstance(node, yaml.MappingNode):
        return loader.construct_mapping(node)
    return None


def _override(loader: yaml.SafeLoader, node: yaml.Node) -> Any:
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node)
    if isinstance(node, yaml.MappingNode):
        return loader.construct_mapping(node)
    return loader.construct_scalar(node)


ComposeLoader.add_constructor("!reset", _reset)
ComposeLoader.add_constructor("!override", _override)


def load_compose(name: str) -> dict[str, Any]:
    data = yaml.load((DEPLOY / name).read_text(), Loader=ComposeLoader)
    assert isinstance(data, dict)
    return data


def load_documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def duration_s(value: str | int | float) -> float:
    """A Compose duration ("330s", "1m30s", "500ms") in seconds."""
    if isinstance(value, int | float):
        return float(value)
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001, "us": 1e-6}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)", value)
    assert parts and "".join(n + u for n, u in parts) == value, f"not a duration: {value!r}"
    return sum(float(number) * units[unit] for number, unit in parts)
