"""The system under load: its own nats-server, the input/output sink, the API and N processes per stage.

Everything is a child process on 127.0.0.1 with ports chosen at start and a temporary directory
for the JetStream store, the logs and the outputs, so a benchmark never touches a developer's
running system. Children get PR_SET_PDEATHSIG, so even a SIGKILLed benchmark leaves none behind;
`stop()` is the normal path (SIGTERM, bounded wait, then SIGKILL).
"""

from __future__ import annotations

import asyncio
import ctypes
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import nats

from shared.wire import WORKERS_BUCKET
from tests.servers import NatsServer, find_binary, start_nats
from tests.system import STAGE_SERVICES, free_port

ROOT = Path(__file__).resolve().parents[1]
WHATIF_DIR = Path(__file__).resolve().with_name("whatif")  # sitecustomize.py: see bench/README.md
READY_TIMEOUT_S = 120.0  # nine processes importing torch/skimage at once on two cores take a while
STOP_TIMEOUT_S = 15.0
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """Runs in the child before exec: SIGTERM it when the benchmark process dies, however it dies."""
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads) so far; 0 once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS  # utime, stime (fields 14, 15 of stat)


def machine_busy_seconds() -> float:
    """CPU seconds all processes on this machine have used (every core, /proc/stat), idle and iowait excluded."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return (user + nice + system + irq + softirq + steal) / _CLOCK_TICKS


@dataclass
class Child:
    """One process of the system: `role` is api, fetcher, ..., nats-server or sink."""

    name: str
    role: str
    pid: int
    popen: subprocess.Popen[bytes] | None = None


@dataclass
class Harness:
    workdir: Path
    procs_per_stage: int = 1
    concurrency: int | None = None
    env: dict[str, str] = field(default_factory=dict)  # extra environment of the services
    whatif: tuple[str, ...] = ()  # patches from bench/whatif/sitecustomize.py
    site: str | None = None  # a directory with extra packages for the services (uvloop, httptools)
    stage_procs: dict[str, int] = field(default_factory=dict)  # processes of one stage, overriding procs_per_stage
    # Services beside the stages, one process each, ready by heartbeat like a stage: ("notifier",) for the
    # full set `task-manager up` runs.
    extra_services: tuple[str, ...] = ()
    nats: NatsServer | None = None
    monitor_url: str = ""
    api_url: str = ""
    sink_url: str = ""
    children: list[Child] = field(default_factory=list)

    async def start(self, input_bytes: bytes | None) -> None:
        """Start NATS (with its monitoring port), the sink, the API and the stages; wait until ready.

        `input_bytes` None: no sink (the caller serves the inputs itself, as bench/samework.py does)."""
        (self.workdir / "logs").mkdir(parents=True, exist_ok=True)
        monitor_port = free_port()
        self.nats = start_nats(self.workdir / "jetstream", extra_args=["-m", str(monitor_port)])
        self.monitor_url = f"http://127.0.0.1:{monitor_port}"
        self.children.append(Child("nats-server", "nats-server", self.nats.process.pid, None))
        if input_bytes is not None:
            self._start_sink(input_bytes)

        api_port = free_port()
        self.api_url = f"http://127.0.0.1:{api_port}"
        model_dir = self.workdir / "models"  # empty: the upscaler takes its Lanczos fallback
        model_dir.mkdir(exist_ok=True)
        env = {
            **os.environ,
            "NATS_URL": self.nats.url,
            "TM_API_HOST": "127.0.0.1",
            "TM_API_PORT": str(api_port),
            "TM_FETCH_ALLOW_PRIVATE_NETWORKS": "true",
            "TM_FILE_ROOT": str(self.workdir.resolve()),  # --input file reads, file:// outputs write, in it
            "TM_RATE_LIMIT_PER_S": "100000",  # a load test measures the system, not the limiter
            "TM_RATE_LIMIT_BURST": "100000",
            "TM_MAX_QUEUE_DEPTH": "1000000",
            "TM_MODEL_DIR": str(model_dir),
            "TM_DEVICE": "cpu",
            # A backlog is what a capacity run builds on purpose: measure it, don't time it out.
            "TM_QUEUE_TIMEOUT_S": "600",
            **({"TM_CONCURRENCY": str(self.concurrency)} if self.concurrency else {}),
            **self.env,
        }
        paths = [str(ROOT)]
        if self.whatif:
            paths.append(str(WHATIF_DIR))
            env["TM_BENCH_WHATIF"] = ",".join(self.whatif)
        if self.site:
            paths.append(self.site)
        if self.whatif or self.site:
            env["PYTHONPATH"] = os.pathsep.join(paths + [p for p in [os.environ.get("PYTHONPATH")] if p])
        self._spawn("api", "api", env)
        for service in STAGE_SERVICES:
            for index in range(1, self.stage_procs.get(service, self.procs_per_stage) + 1):
                self._spawn(f"{service}-{index}", service, env)
        for service in self.extra_services:
            self._spawn(service, service, env)
        await asyncio.gather(self._wait_stages(), self._wait_api())

    def _start_sink(self, input_bytes: bytes) -> None:
        image = self.workdir / "input.png"
        image.write_bytes(input_bytes)
        popen = subprocess.Popen(
            [sys.executable, str(Path(__file__).with_name("sink.py")), str(image)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            preexec_fn=_die_with_parent,
        )
        self.children.append(Child("sink", "sink", popen.pid, popen))
        assert popen.stdout is not None
        line = popen.stdout.readline().decode()  # "port <N>", printed once it listens
        if not line.startswith("port "):
            raise RuntimeError(f"the sink did not start: {line!r}")
        self.sink_url = f"http://127.0.0.1:{int(line.split()[1])}"

    def _spawn(self, name: str, service: str, env: dict[str, str]) -> None:
        log = open(self.workdir / "logs" / f"{name}.log", "ab")  # noqa: SIM115 - owned by the child
        popen = subprocess.Popen(
            [sys.executable, "-m", f"services.{service}"],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent,
        )
        log.close()
        self.children.append(Child(name, service, popen.pid, popen))

    def stage_pids(self) -> set[int]:
        return {c.pid for c in self.children if c.role in STAGE_SERVICES or c.role in self.extra_services}

    async def _wait_stages(self) -> None:
        """A stage process is ready once its heartbeat (with its pid) is in the workers bucket."""
        assert self.nats is not None
        waiting = self.stage_pids()
        nc = await nats.connect(self.nats.url, name="bench-ready")
        try:
            async with asyncio.timeout(READY_TIMEOUT_S):
                while waiting:
                    self._check_alive()
                    try:
                        kv = await nc.jetstream().key_value(WORKERS_BUCKET)
                        for key in await kv.keys():
                            entry = await kv.get(key)
                            if entry.value:
                                waiting.discard(json.loads(entry.value)["pid"])
                    except Exception:  # bucket not declared yet, or no keys yet
                        pass
                    await asyncio.sleep(0.25)
        except TimeoutError as exc:
            raise RuntimeError(f"stages not ready in {READY_TIMEOUT_S}s:\n{self.logs()}") from exc
        finally:
            await nc.close()

    async def _wait_api(self) -> None:
        try:
            async with asyncio.timeout(READY_TIMEOUT_S), httpx.AsyncClient() as client:
                while True:
                    self._check_alive()
                    try:
                        if (await client.get(f"{self.api_url}/health")).status_code == 200:
                            return
                    except httpx.HTTPError:
                        pass
                    await asyncio.sleep(0.1)  # nothing to await on an HTTP server coming up
        except TimeoutError as exc:
            raise RuntimeError(f"the API did not answer /health in {READY_TIMEOUT_S}s:\n{self.logs()}") from exc

    def _check_alive(self) -> None:
        for child in self.children:
            if child.popen is not None and child.popen.poll() is not None:
                raise RuntimeError(f"{child.name} exited with {child.popen.returncode}:\n{self.logs()}")

    def cpu_snapshot(self) -> dict[str, float]:
        """CPU seconds so far per child, plus this (the load generator's) process."""
        snapshot = {child.name: cpu_seconds(child.pid) for child in self.children}
        snapshot["load generator"] = cpu_seconds(os.getpid())
        snapshot["machine"] = machine_busy_seconds()
        return snapshot

    async def connections(self) -> dict[str, dict[str, int]]:
        """Messages in/out per NATS connection name (summed over processes), from the monitoring port."""
        async with httpx.AsyncClient() as client:
            body = (await client.get(f"{self.monitor_url}/connz", params={"limit": 4096})).json()
        totals: dict[str, dict[str, int]] = {}
        for conn in body.get("connections", []):
            row = totals.setdefault(conn.get("name") or "?", {"in_msgs": 0, "out_msgs": 0})
            row["in_msgs"] += conn.get("in_msgs", 0)
            row["out_msgs"] += conn.get("out_msgs", 0)
        return totals

    def logs(self, tail: int = 20) -> str:
        return log_tails(self.workdir / "logs", tail)

    def stop(self) -> None:
        """SIGTERM every child (services first, NATS last), wait a bounded time, then SIGKILL."""
        services = [c for c in self.children if c.popen is not None]
        for child in services:
            if child.popen is not None and child.popen.poll() is None:
                child.popen.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for child in services:
            assert child.popen is not None
            try:
                child.popen.wait(max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                child.popen.kill()
                child.popen.wait()
        if self.nats is not None:
            self.nats.stop()
        self.children.clear()


class Profiler:
    """py-spy record (raw collapsed stacks, CPU only) on each Python child while the load runs."""

    def __init__(self, outdir: Path, rate_hz: int = 100) -> None:
        self.py_spy = find_py_spy()  # before anything starts: a missing tool fails the run at once
        self.outdir = outdir
        self.rate_hz = rate_hz
        self.samplers: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, children: list[Child]) -> None:
        """Sample every Python child (nats-server is Go: its CPU is measured, not sampled) and this process."""
        self.outdir.mkdir(parents=True, exist_ok=True)
        targets = {child.name: child.pid for child in children if child.popen is not None}
        targets["load generator"] = os.getpid()
        for name, pid in targets.items():
            self.samplers[name] = subprocess.Popen(
                [self.py_spy, "record", "--pid", str(pid), "--rate", str(self.rate_hz), "--nonblocking"]
                + ["--format", "raw", "--output", str(self.outdir / f"{name}.txt")],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                preexec_fn=_die_with_parent,
            )

    def stop(self) -> dict[str, Path]:
        """Stop sampling (py-spy writes its file on SIGINT); the raw files by child name."""
        for sampler in self.samplers.values():
            sampler.send_signal(signal.SIGINT)
        for sampler in self.samplers.values():
            try:
                sampler.wait(20)
            except subprocess.TimeoutExpired:
                sampler.kill()
        return {name: self.outdir / f"{name}.txt" for name in self.samplers}


def find_py_spy() -> str:
    """$PY_SPY, else py-spy beside the venv's python or on PATH (`pip install py-spy`)."""
    explicit = os.environ.get("PY_SPY")
    if explicit and os.access(explicit, os.X_OK):
        return explicit
    try:
        return find_binary("py-spy")
    except RuntimeError as exc:
        raise RuntimeError("--profile needs py-spy: pip install py-spy (or set PY_SPY to its path)") from exc


def log_tails(log_dir: Path, tail: int = 20) -> str:
    """The last `tail` lines of every log in `log_dir`, each under its file name."""
    parts = []
    for path in sorted(log_dir.glob("*.log")):
        lines = path.read_text(errors="replace").splitlines()[-tail:]
        parts.append(f"--- {path.name}\n" + "\n".join(lines))
    return "\n".join(parts)
