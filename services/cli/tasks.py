"""`task-manager submit` and `task-manager status`: thin clients of the REST API, for people.

The API is at `--api` (default `TM_API_URL`, else http://127.0.0.1:8000); when it needs a key, the
key is read from `TM_API_KEY` (never from the command line, where `ps` would show it). Exit codes:
0 success, 1 the task did not succeed (or does not exist), 2 the request was refused or the API is
unreachable, 3 `--wait` ran out of time.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any
from urllib.parse import quote

import httpx

from shared.messages import TASK_NAME

DEFAULT_API = "http://127.0.0.1:8000"
POLL_S = 0.5
BAR_WIDTH = 30


class CliError(Exception):
    """A failure to report in one line, without a traceback."""

    def __init__(self, message: str, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def register(subparsers: Any) -> None:
    submit = subparsers.add_parser("submit", help="submit a task (and optionally wait for it)")
    submit.add_argument("input_url", help="image to upscale (http(s)://, s3://bucket/key, file:// in TM_FILE_ROOT)")
    submit.add_argument(
        "output_url", help="where to write the result (s3://bucket/key.png, https://..., file:// in TM_FILE_ROOT)"
    )
    submit.add_argument("--priority", type=int, default=5, help="0 (lowest) to 10 (highest), default 5")
    submit.add_argument("--model", help="a Real-ESRGAN model name instead of the routed one")
    submit.add_argument("--wait", action="store_true", help="follow progress until the task ends")
    submit.add_argument("--timeout", type=float, default=600, help="longest --wait in seconds (default 600)")
    _api_option(submit)
    submit.set_defaults(func=_reporting(submit_command))

    status = subparsers.add_parser("status", help="show a task's state")
    status.add_argument("task_id")
    status.add_argument("--json", action="store_true", help="the raw status document")
    _api_option(status)
    status.set_defaults(func=_reporting(status_command))


def _api_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--api",
        default=os.environ.get("TM_API_URL", DEFAULT_API),
        help=f"API base URL (default: TM_API_URL or {DEFAULT_API}); the key, if needed, comes from TM_API_KEY",
    )


def _reporting(command: Any) -> Any:
    def run(args: argparse.Namespace) -> int:
        try:
            return int(command(args))
        except CliError as exc:
            print(f"task-manager {args.command}: {exc}", file=sys.stderr)
            return exc.exit_code
        except KeyboardInterrupt:
            return 130

    return run


class ApiClient:
    def __init__(self, base_url: str) -> None:
        headers = {"Accept": "application/json"}
        if key := os.environ.get("TM_API_KEY"):
            headers["Authorization"] = f"Bearer {key}"
        if not base_url.startswith(("http://", "https://")) or len(base_url.split("://", 1)[1].strip("/")) == 0:
            raise CliError(f"the API URL must be http(s)://host[:port], not {base_url!r} (--api or TM_API_URL)")
        self.base_url = base_url.rstrip("/")
        self._http = httpx.Client(base_url=self.base_url, headers=headers, timeout=30)

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        """The JSON answer of a 2xx; CliError naming the API's `detail` otherwise."""
        for _ in range(10):
            try:
                response = self._http.request(method, path, json=body)
            except httpx.InvalidURL as exc:
                raise CliError(f"bad API URL {self.base_url!r}: {exc}") from exc
            except httpx.HTTPError as exc:
                raise CliError(f"cannot reach the API at {self.base_url}: {exc or type(exc).__name__}") from exc
            if response.status_code == 429 and method == "GET":  # polling too fast: wait as told
                time.sleep(min(float(response.headers.get("Retry-After", "1")), 5.0))
                continue
            break
        if response.is_success:
            return dict(response.json())
        raise CliError(_explain(response), 1 if response.status_code == 404 else 2)

    def close(self) -> None:
        self._http.close()


def _explain(response: httpx.Response) -> str:
    try:
        detail = response.json().get("detail", response.text)
    except ValueError:
        detail = response.text.strip() or response.reason_phrase
    if response.status_code == 401:
        hint = "set TM_API_KEY" if "TM_API_KEY" not in os.environ else "check TM_API_KEY"
        return f"unauthorized ({detail}): {hint}"
    return f"{response.status_code} {response.reason_phrase}: {detail}"


def submit_command(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"task_name": TASK_NAME, "args": [args.input_url, args.output_url]}
    body["priority"] = args.priority
    if args.model:
        body["kwargs"] = {"model": args.model}
    api = ApiClient(args.api)
    try:
        accepted = api.call("POST", "/api/v1/tasks", body)
        if not args.wait:
            print(json.dumps(accepted, indent=2))
            return 0
        final = wait_for(api, accepted["task_id"], args.timeout)
    finally:
        api.close()
    print(json.dumps(final, indent=2))
    return 0 if final["state"] == "SUCCESS" else 1


def wait_for(api: ApiClient, task_id: str, timeout_s: float) -> dict[str, Any]:
    """Poll the task until it is terminal, drawing its progress on stderr."""
    bar = ProgressBar(task_id)
    deadline = time.monotonic() + timeout_s
    while True:
        status = api.call("GET", f"/api/v1/tasks/{task_id}")
        bar.show(status)
        if status["state"] in ("SUCCESS", "FAILURE", "TIMEOUT", "REVOKED"):
            bar.close()
            return status
        if time.monotonic() > deadline:
            bar.close()
            raise CliError(f"task {task_id} still {status['state']} after {timeout_s:g} s", 3)
        time.sleep(POLL_S)


class ProgressBar:
    """One redrawn line on a terminal; elsewhere (logs, pipes) one line per change."""

    def __init__(self, task_id: str) -> None:
        self.task_id = task_id
        self.tty = sys.stderr.isatty()
        self._last = ""

    def show(self, status: dict[str, Any]) -> None:
        fraction = min(max(float(status.get("progress") or 0.0), 0.0), 1.0)
        filled = int(fraction * BAR_WIDTH)
        stage = _current_stage(status)
        line = f"[{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {fraction:4.0%} {status['state']}"
        line += f" ({stage})" if stage else ""
        if line == self._last:
            return
        self._last = line
        sys.stderr.write(f"\r{line}\033[K" if self.tty else f"{self.task_id[:8]} {line}\n")
        sys.stderr.flush()

    def close(self) -> None:
        if self.tty:
            sys.stderr.write("\n")
            sys.stderr.flush()


def _current_stage(status: dict[str, Any]) -> str | None:
    if status["state"] in ("SUCCESS", "FAILURE", "TIMEOUT", "REVOKED"):
        return None
    return next((s["name"] for s in status.get("subtasks", []) if s.get("state") != "SUCCESS"), None)


def status_command(args: argparse.Namespace) -> int:
    api = ApiClient(args.api)
    try:
        status = api.call("GET", f"/api/v1/tasks/{quote(args.task_id, safe='')}")
    finally:
        api.close()
    print(json.dumps(status, indent=2) if args.json else summary(status))
    return 0


def summary(status: dict[str, Any]) -> str:
    """A task's status as a few aligned lines for a person."""
    result = status.get("result") or {}
    classification = status.get("classification") or result.get("classification") or {}
    lines = [
        ("Task", status["task_id"]),
        ("State", f"{status['state']} ({float(status.get('progress') or 0):.0%})"),
        ("Priority", str(status.get("priority", ""))),
        ("Input", status.get("input_url") or ""),
        ("Output", status.get("output_url") or ""),
        ("Submitted", status.get("submitted_at") or ""),
        ("Started", status.get("started_at") or "-"),
        ("Completed", status.get("completed_at") or "-"),
    ]
    if classification:
        lines.append(("Category", f"{classification.get('category')} {classification.get('width')}x"
                                  f"{classification.get('height')}"))  # fmt: skip
    if result.get("output_width"):
        size = f"{result['output_width']}x{result['output_height']} {result.get('output_format', '')}".strip()
        lines.append(("Result", f"{size}, model {result.get('model', '?')} ({status.get('worker_type') or '?'})"))
    if status.get("error"):
        lines.append(("Error", status["error"]))
    text = "\n".join(f"{name:<10} {value}" for name, value in lines)
    stages = [
        f"  {s['name']:<9} {s['state']:<8} {s.get('worker_id') or '-':<36} attempts {s.get('attempts', 0)}"
        + (f"  {s['error']}" if s.get("error") else "")
        for s in status.get("subtasks", [])
    ]
    return text + ("\nStages\n" + "\n".join(stages) if stages else "")
