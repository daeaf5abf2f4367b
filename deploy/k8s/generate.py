"""Write deploy/k8s/scaledobjects.yaml: a KEDA ScaledObject per pipeline stage.

Each stage has one durable consumer on each priority stream (TM_WORK_P0 .. TM_WORK_P10), so each
ScaledObject has one `nats-jetstream` trigger per stream, named p0 .. p10, and a scaling modifier
that sums them: the replica count follows the stage's whole backlog, not its busiest priority. KEDA's
lag is a consumer's pending plus unacknowledged messages, so work in hand counts too. The stream and
consumer names come from shared/messages.py, the same functions the services use.

    python deploy/k8s/generate.py           # rewrite scaledobjects.yaml
    python deploy/k8s/generate.py --check   # exit 1 if it is out of date (tests/deploy checks this too)
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

from shared.messages import PRIORITIES, Stage  # noqa: E402
from shared.wire import consumer_name, work_stream  # noqa: E402

OUTPUT = Path(__file__).with_name("scaledobjects.yaml")
NAMESPACE = "task-manager"
# KEDA reads consumer lag from the NATS monitoring port. On a cluster it asks the consumer's leader,
# which it reaches as <pod>.<this host>: so the host is the chart's headless Service (release "nats").
NATS_MONITORING_ENDPOINT = f"nats-headless.{NAMESPACE}.svc.cluster.local:8222"
NATS_ACCOUNT = "$G"  # the global account: the NATS config defines no accounts
POLLING_INTERVAL_S = 10  # well inside TM_QUEUE_TIMEOUT_S (30 s), so a backlog is seen before it times out
# Only matters for scaling to zero, which no stage does: a stage with no worker times its tasks out
# after TM_QUEUE_TIMEOUT_S, faster than a new pod starts.
COOLDOWN_S = 300


@dataclass(frozen=True)
class Scaling:
    deployment: str
    min_replicas: int
    max_replicas: int
    lag_per_replica: int  # messages (waiting + in hand) one replica is meant to carry
    scale_down: dict[str, Any] = field(default_factory=dict)  # HPA behavior.scaleDown
    scale_up: dict[str, Any] = field(default_factory=dict)  # HPA behavior.scaleUp


FAST_UP = {
    "stabilizationWindowSeconds": 0,
    "selectPolicy": "Max",
    "policies": [
        {"type": "Percent", "value": 100, "periodSeconds": 15},
        {"type": "Pods", "value": 4, "periodSeconds": 15},
    ],
}
GENTLE_DOWN = {"stabilizationWindowSeconds": 120, "policies": [{"type": "Percent", "value": 50, "periodSeconds": 60}]}
UPSCALER_GRACE_S = 330  # the upscaler's terminationGracePeriodSeconds (upscaler.yaml)

SCALING: dict[Stage, Scaling] = {
    Stage.FETCH: Scaling("fetcher", 1, 10, 8, GENTLE_DOWN, FAST_UP),
    Stage.CLASSIFY: Scaling("classifier", 1, 10, 8, GENTLE_DOWN, FAST_UP),
    Stage.UPSCALE: Scaling(
        "upscaler",
        1,
        8,
        2,  # TM_CONCURRENCY=2: one inference, one prefetched
        # One pod at a time, at most one per grace period, after ten quiet minutes: a pod told to stop
        # finishes its inference first (SIGTERM drain), and GPUs are not given back on a short lull.
        {
            "stabilizationWindowSeconds": 600,
            "selectPolicy": "Min",
            "policies": [{"type": "Pods", "value": 1, "periodSeconds": UPSCALER_GRACE_S}],
        },
        {
            "stabilizationWindowSeconds": 30,
            "selectPolicy": "Max",
            "policies": [{"type": "Pods", "value": 2, "periodSeconds": 60}],
        },
    ),
    Stage.UPLOAD: Scaling("uploader", 1, 10, 8, GENTLE_DOWN, FAST_UP),
}


def trigger_name(priority: int) -> str:
    return f"p{priority}"


def scaled_object(stage: Stage, scaling: Scaling) -> dict[str, Any]:
    triggers = [
        {
            "type": "nats-jetstream",
            "name": trigger_name(priority),
            "metadata": {
                "natsServerMonitoringEndpoint": NATS_MONITORING_ENDPOINT,
                "account": NATS_ACCOUNT,
                "stream": work_stream(priority),
                "consumer": consumer_name(stage),
                "lagThreshold": str(scaling.lag_per_replica),
            },
        }
        for priority in PRIORITIES
    ]
    return {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "ScaledObject",
        "metadata": {
            "name": scaling.deployment,
            "labels": {"app.kubernetes.io/name": "task-manager", "app.kubernetes.io/component": scaling.deployment},
        },
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": scaling.deployment},
            "pollingInterval": POLLING_INTERVAL_S,
            "cooldownPeriod": COOLDOWN_S,
            "minReplicaCount": scaling.min_replicas,
            "maxReplicaCount": scaling.max_replicas,
            "advanced": {
                "restoreToOriginalReplicaCount": False,
                "horizontalPodAutoscalerConfig": {
                    "behavior": {"scaleUp": scaling.scale_up, "scaleDown": scaling.scale_down}
                },
                "scalingModifiers": {
                    "formula": " + ".join(trigger_name(priority) for priority in PRIORITIES),
                    "target": str(scaling.lag_per_replica),
                    "metricType": "AverageValue",
                },
            },
            "triggers": triggers,
        },
    }


HEADER = """\
# Generated by deploy/k8s/generate.py from shared/messages.py: do not edit, run
#   python deploy/k8s/generate.py
# KEDA ScaledObjects (KEDA 2.12 or newer: scalingModifiers). Each stage scales on the lag of its
# durable consumer on every priority stream, summed; see generate.py and deploy/README.md.
"""


def render() -> str:
    """The whole file, deterministic: the same input always gives the same bytes."""
    documents = [scaled_object(stage, scaling) for stage, scaling in SCALING.items()]
    return HEADER + yaml.safe_dump_all(documents, sort_keys=False, explicit_start=True, width=120)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the committed file is out of date")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        if not OUTPUT.is_file() or OUTPUT.read_text() != text:
            sys.stderr.write(f"{OUTPUT} is out of date: run python deploy/k8s/generate.py\n")
            return 1
        return 0
    OUTPUT.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
