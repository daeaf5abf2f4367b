"""When tracing is on (shared/tracing.py): only when OTEL_* asks for it, and off it loads nothing."""

from __future__ import annotations

import subprocess
import sys

import pytest

from shared import tracing
from tests.system import ROOT

ENDPOINT = "http://collector:4318"


@pytest.mark.parametrize(
    ("env", "on"),
    [
        ({}, False),  # the default: off (the specification's default would send to localhost:4318)
        ({"OTEL_SERVICE_NAME": "api", "OTEL_BSP_SCHEDULE_DELAY": "100"}, False),  # settings, no exporter asked for
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": ENDPOINT}, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": f"{ENDPOINT}/v1/traces"}, True),
        ({"OTEL_TRACES_EXPORTER": "otlp"}, True),  # to the default endpoint, explicitly
        ({"OTEL_TRACES_EXPORTER": " OTLP , console"}, True),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": ENDPOINT}, False),
        ({"OTEL_TRACES_EXPORTER": "console", "OTEL_EXPORTER_OTLP_ENDPOINT": ENDPOINT}, False),  # only otlp is shipped
        ({"OTEL_SDK_DISABLED": "true", "OTEL_EXPORTER_OTLP_ENDPOINT": ENDPOINT}, False),
        ({"OTEL_SDK_DISABLED": "false", "OTEL_EXPORTER_OTLP_ENDPOINT": ENDPOINT}, True),
    ],
)
def test_tracing_is_on_only_when_otel_asks_for_an_exporter(env: dict[str, str], on: bool) -> None:
    assert tracing.wanted(env) is on


def test_setup_without_an_exporter_asked_for_leaves_tracing_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "none")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", ENDPOINT)
    assert tracing.setup("fetcher", "0", "fetcher-1") is False
    assert tracing.ENABLED is False and tracing.trace_id() is None


def test_off_the_services_never_import_the_sdk() -> None:
    """The hooks check a flag; the SDK and exporter are imported by setup() alone, once it is asked to trace."""
    code = (
        "import sys\n"
        "import shared.runtime.service, services.notifier.worker, services.api.tasks.intake, shared.tracing as t\n"
        "assert t.setup('fetcher', '0', 'fetcher-1') is False\n"
        "print(sorted(m for m in sys.modules if m.startswith(('opentelemetry.sdk', 'opentelemetry.exporter'))))\n"
    )
    env = {"PATH": "/usr/bin:/bin"}  # no OTEL_* from the test's environment
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
