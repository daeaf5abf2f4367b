"""The Celery stack of bench/samework.py: redis-server (broker and result backend) and one Celery worker.

The worker is `celery -A bench.celery_tasks worker --pool prefork --concurrency 2 --loglevel INFO`: a main
process that takes the messages and two pool processes that run the tasks. A task is one chain
fetch -> classify -> upscale -> upload (one message on the broker; each task's result sends the next);
the client waits on the chain's last result with `AsyncResult.get()`, one thread per task, which the
Redis backend serves from its pub/sub subscription to the result's channel.

The client's tasks are spread over CLIENT_SHARDS Celery apps, each with its own backend and subscription.
With one app, every result message wakes every waiting thread (the backend lets one thread read the
socket and `notify_all`s the others): 500 waits cost the client ~96 ms of CPU per task, half a core taken
from the stack under test on two cores; with 16 apps ~30-35 ms (64 apps: no better; what is left is each
waiting thread waking every second). bench/load.py spreads its HTTP clients for the same reason.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import redis
from celery import Celery, chain
from celery.exceptions import TimeoutError as CeleryTimeoutError

from bench.harness import _die_with_parent, log_tails
from bench.workload import Job, Outcome
from tests.system import free_port

ROOT = Path(__file__).resolve().parents[1]
READY_TIMEOUT_S = 120.0  # the worker imports torch and scikit-image before it forks
STOP_TIMEOUT_S = 20.0
CLIENT_SHARDS = 16
CLIENT_CONNECTIONS = 1024  # each client app's result backend pool: at least one per waiting thread
INSTALL_HINT = "redis-server not found: install it (Debian/Ubuntu: apt-get install -y redis-server) or put it on PATH"


class CeleryStack:
    name = "celery"

    def __init__(self, workdir: Path, env: dict[str, str], concurrency: int = 2) -> None:
        self.workdir = workdir
        self.env = env  # S3 credentials, TM_MODEL_DIR, TM_DEVICE
        self.concurrency = concurrency
        self.redis: subprocess.Popen[bytes] | None = None
        self.worker: subprocess.Popen[bytes] | None = None
        self.apps: list[Celery] = []

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise SystemExit(INSTALL_HINT)
        (self.workdir / "logs").mkdir(parents=True, exist_ok=True)
        port = free_port()
        # No snapshots or append-only file: a broker on loopback for one run, and no fork for BGSAVE mid-run.
        self.redis = self._spawn(
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
            + ["--dir", str(self.workdir), "--loglevel", "warning"],
            "redis-server",
            os.environ.copy(),
        )
        url = f"redis://127.0.0.1:{port}/0"
        self._wait_redis(port)
        env = {**os.environ, **self.env, "BENCH_REDIS_URL": url, "PYTHONPATH": str(ROOT)}
        self.worker = self._spawn(
            [sys.executable, "-m", "celery", "-A", "bench.celery_tasks", "worker", "--pool", "prefork"]
            + ["--concurrency", str(self.concurrency), "--loglevel", "INFO", "--hostname", "samework@%h"],
            "celery-worker",
            env,
        )
        # The client needs no task code: it sends the chain by task name, with Celery's default settings but
        # one. Every waiting thread reads its result's state once with a pooled connection, and redis-py (8)
        # caps a pool at 100 connections: with 500 waits, get() raised MaxConnectionsError in 394 of them.
        for shard in range(CLIENT_SHARDS):
            app = Celery(f"samework-client-{shard}", broker=url, backend=url)
            app.conf.update(broker_connection_retry_on_startup=True, redis_max_connections=CLIENT_CONNECTIONS)
            self.apps.append(app)
        self._wait_worker()

    def _spawn(self, args: list[str], name: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
        with open(self.workdir / "logs" / f"{name}.log", "ab") as log:
            return subprocess.Popen(
                args, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent,
            )  # fmt: skip

    def _wait_redis(self, port: int) -> None:
        client = redis.Redis(port=port, socket_connect_timeout=1)
        deadline = time.monotonic() + 15
        while True:
            try:
                client.ping()
                return
            except redis.ConnectionError:
                if time.monotonic() > deadline or (self.redis and self.redis.poll() is not None):
                    raise RuntimeError(f"redis-server did not start:\n{self.logs()}") from None
            time.sleep(0.05)  # nothing to wait on but the port

    def _wait_worker(self) -> None:
        """Ready when the worker answers a remote-control ping (it has connected and forked its pool)."""
        assert self.apps and self.worker is not None
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not self.apps[0].control.ping(timeout=1.0):
            if self.worker.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the Celery worker is not ready:\n{self.logs()}")

    def roots(self) -> dict[str, int]:
        """The stack's processes; the pool processes are found under the worker's main process."""
        assert self.redis is not None and self.worker is not None
        return {"redis-server": self.redis.pid, "celery worker": self.worker.pid}

    def run(self, jobs: list[Job], rate: float | None, timeout_s: float) -> list[Outcome]:
        """Send every chain (at `rate` a second, or all at once), one waiting thread per task."""
        assert self.apps
        outcomes = [Outcome(job.index) for job in jobs]
        deadline = time.perf_counter() + timeout_s
        waiters = []
        began = time.perf_counter()
        for k, (job, outcome) in enumerate(zip(jobs, outcomes, strict=True)):
            if rate:
                time.sleep(max(began + k / rate - time.perf_counter(), 0))
            app = self.apps[k % len(self.apps)]
            work = chain(
                app.signature("samework.fetch", args=(job.input_url,)),
                app.signature("samework.classify"),
                app.signature("samework.upscale", args=(job.output_url,)),
                app.signature("samework.upload", args=(job.output_url,)),
            )
            outcome.sent = time.perf_counter()
            try:
                result = work.apply_async()
            except Exception as exc:  # the broker refused it: a failure of this task, reported
                outcome.error = f"send: {type(exc).__name__}: {exc}"
                continue
            waiter = threading.Thread(target=_wait, args=(result, outcome, deadline), daemon=True)
            waiter.start()
            waiters.append(waiter)
        for waiter in waiters:
            waiter.join(max(deadline - time.perf_counter(), 0) + 5)
        return outcomes

    def logs(self, tail: int = 20) -> str:
        return log_tails(self.workdir / "logs", tail)

    def stop(self) -> None:
        """The worker first (a warm shutdown finishes its tasks), then the broker."""
        for process in (self.worker, self.redis):
            if process is None or process.poll() is not None:
                continue
            process.terminate()
            try:
                process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _wait(result, outcome: Outcome, deadline: float) -> None:  # type: ignore[no-untyped-def]
    try:
        result.get(timeout=max(deadline - time.perf_counter(), 0.1))
    except CeleryTimeoutError:
        outcome.error = "no result before the deadline"
        return
    except Exception as exc:  # the task's own error, raised again by get(): a failed task
        outcome.error = f"{type(exc).__name__}: {exc}"[:300]
    outcome.done = time.perf_counter()
