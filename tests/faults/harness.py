"""The fault suite's harness: submit a run of tasks through the API while a fault happens, then
observe every task and count the lost and the duplicated.

Outputs are PUTs to the test HTTP server, which records every request: a second upload of a key is
seen although it overwrites the first. A task is lost when it does not end in its expected state
(SUCCESS unless the scenario says otherwise) or a SUCCESS has no output; duplicated when its output
was written more than once, an ended (TIMEOUT/REVOKED) task wrote one anyway, or it has more than
one terminal event.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import httpx
import nats
from nats.js.errors import KeyNotFoundError

from shared.messages import PRIORITIES
from shared.wire import EVENTS_SUBJECTS, TASKS_BUCKET, work_stream
from tests.e2e.images import photo
from tests.servers import StaticHTTPServer
from tests.system import System

TASK = "image_super_resolution_pipeline"
TASKS = 120
BATCH = 10  # submissions in flight at once
BUDGET_S = 90.0  # one scenario, from the first submission to the last check
FAULT_ENV = {
    "TM_ACK_WAIT_S": "5",  # a message whose worker lost its broker comes back within seconds
    # A handler stuck on a consumer lost in the restart (seen in a blob read) is retried within the budget.
    "TM_STALL_TIMEOUT_S": "15",
}


@dataclass
class Run:
    """One scenario's submissions and what the test observed of them."""

    name: str
    system: System
    servers: list[str]  # client URLs for the test's own connections (every node of a cluster)
    http_server: StaticHTTPServer
    prefix: str = field(default_factory=lambda: f"fault-{uuid.uuid4().hex[:12]}")
    task_ids: list[str] = field(default_factory=list)
    outputs: dict[str, str] = field(default_factory=dict)  # task id -> output name on the HTTP server
    refused: list[str] = field(default_factory=list)  # output names of submissions answered 503
    began: float = field(default_factory=time.monotonic)
    outage_seen: asyncio.Event = field(default_factory=asyncio.Event)  # set on every 503
    expected: dict[str, str] = field(default_factory=dict)  # task id -> terminal state, if not SUCCESS
    kwargs: dict[str, object] = field(default_factory=dict)  # upscaler options of every submission
    _accepted: asyncio.Condition = field(default_factory=asyncio.Condition)

    @property
    def deadline(self) -> float:
        return self.began + BUDGET_S

    def left_s(self, floor_s: float = 5.0) -> float:
        return max(self.deadline - time.monotonic(), floor_s)

    def output_name(self, n: int, attempt: int) -> str:
        # One name per attempt: a refused submission that ran anyway shows up as its own PUT.
        return f"{self.prefix}-{n}-a{attempt}.png"

    async def accept(self, task_id: str, output: str) -> None:
        async with self._accepted:
            self.task_ids.append(task_id)
            self.outputs[task_id] = output
            self._accepted.notify_all()

    async def accepted(self, count: int) -> None:
        """Until `count` submissions have been accepted (the fault scripts' cue)."""
        async with asyncio.timeout(self.left_s()), self._accepted:
            await self._accepted.wait_for(lambda: len(self.task_ids) >= count)


@dataclass
class Outcome:
    """What a scenario observed, per task, for the tests to assert on."""

    name: str
    task_ids: list[str]
    expected: dict[str, str]  # task id -> the terminal state it must end in
    puts: dict[str, int]  # task id -> PUTs of its output
    events: dict[str, list[str]]  # task id -> terminal states published
    states: dict[str, str]  # task id -> state in the KV bucket
    ghosts: list[str]  # outputs of submissions refused with 503 that were written anyway
    refused: int
    rerun: int  # tasks with a stage that ran more than once
    left: dict[str, int]  # work stream -> messages still queued
    exited: dict[str, int | None]  # service -> exit code, for services that exited or were replaced
    elapsed_s: float
    logs: str

    @property
    def lost(self) -> list[str]:
        return [
            t
            for t in self.task_ids
            if self.states[t] != self.expected[t] or (self.expected[t] == "SUCCESS" and self.puts[t] == 0)
        ]

    @property
    def duplicated(self) -> list[str]:
        """Written twice, written although it was ended (timed out, revoked), or two terminal events."""
        return [
            t
            for t in self.task_ids
            if self.puts[t] > 1
            or (self.expected[t] != "SUCCESS" and self.puts[t] > 0)
            or len(self.events.get(t, [])) > 1
        ]

    @property
    def without_event(self) -> list[str]:
        return [t for t in self.task_ids if not self.events.get(t)]

    def describe(self, task_ids: list[str]) -> str:
        rows = [(t, self.states[t], self.events.get(t), self.puts[t]) for t in task_ids[:5]]
        return f"(task, state, events, puts): {rows}\n{self.logs}"


async def submit_one(run: Run, api: httpx.AsyncClient, source: str, n: int) -> None:
    """Submit task `n`; a 503 (nothing was queued) is retried, as a client would, and counted."""
    for attempt in itertools.count():
        output = run.output_name(n, attempt)
        body = {
            "task_name": TASK,
            "args": [source, run.http_server.url(f"put/{output}")],
            "priority": PRIORITIES[n % len(PRIORITIES)],
            "kwargs": run.kwargs,
        }
        response = await api.post("/api/v1/tasks", json=body)
        if response.status_code == 202:
            await run.accept(response.json()["task_id"], output)
            return
        assert response.status_code == 503, f"submission {n}: {response.status_code} {response.text}"
        run.refused.append(output)
        run.outage_seen.set()
        assert time.monotonic() < run.deadline, f"submission {n} still refused after {BUDGET_S}s"
        await asyncio.sleep(0.2)  # a client's back-off before it retries, not a synchronisation


async def submit_all(run: Run, source: str) -> None:
    async with httpx.AsyncClient(base_url=run.system.api_url, timeout=30) as api:
        for start in range(0, TASKS, BATCH):
            await asyncio.gather(*(submit_one(run, api, source, n) for n in range(start, min(start + BATCH, TASKS))))


async def terminal_events(run: Run) -> dict[str, list[str]]:
    """Every terminal state published for each task, replayed from the events stream: wait (within
    the budget) until each task has one, then read the rest of the stream to catch second ones."""
    wanted = set(run.task_ids)
    seen: dict[str, list[str]] = defaultdict(list)
    nc = await nats.connect(servers=run.servers)
    try:
        js = nc.jetstream()
        sub = await js.subscribe(EVENTS_SUBJECTS, ordered_consumer=True)
        read: set[int] = set()  # stream sequences: a consumer reset replays, a second event has its own
        pending = [1]  # terminal events not read yet (the stream also holds change events, task.changes.>)

        async def read_one() -> None:
            msg = await sub.next_msg(timeout=run.left_s(1.0))
            pending[0] = msg.metadata.num_pending
            sequence = msg.metadata.sequence.stream
            status = json.loads(msg.data)
            if sequence not in read and status["task_id"] in wanted:
                seen[status["task_id"]].append(status["state"])
            read.add(sequence)

        try:
            async with asyncio.timeout(run.left_s()):
                while wanted - seen.keys():
                    await read_one()
            async with asyncio.timeout(10):
                while pending[0]:
                    await read_one()
        except TimeoutError:
            pass  # the tests report what is missing
    finally:
        await nc.close()
    return dict(seen)


async def final_states(run: Run) -> tuple[dict[str, str], int]:
    """Each task's state in the KV bucket (what GET returns; 'missing' if it has no entry), and how
    many tasks had a stage run more than once (the fault really hit work in progress)."""
    nc = await nats.connect(servers=run.servers)
    try:
        kv = await nc.jetstream().key_value(TASKS_BUCKET)
        states = {}
        rerun = 0
        for task_id in run.task_ids:
            try:
                entry = await kv.get(task_id)
                status = json.loads(entry.value or b"{}")
                states[task_id] = status.get("state", "missing")
                rerun += any(s.get("attempts", 0) > 1 for s in status.get("subtasks", []))
            except KeyNotFoundError:
                states[task_id] = "missing"
        return states, rerun
    finally:
        await nc.close()


async def queued_messages(run: Run, timeout_s: float = 20.0) -> dict[str, int]:
    """Messages left in the work streams once the last acks are in (an ack lost with a broker
    comes back after the ack wait and is then dropped): {} when all are empty within `timeout_s`."""
    nc = await nats.connect(servers=run.servers)
    try:
        js = nc.jetstream()
        deadline = time.monotonic() + timeout_s
        while True:
            counts = {work_stream(p): (await js.stream_info(work_stream(p))).state.messages for p in PRIORITIES}
            left = {name: count for name, count in counts.items() if count}
            if not left or time.monotonic() > deadline:
                return left
            await asyncio.sleep(0.2)  # acks remove messages without any event a client can await
    finally:
        await nc.close()


async def run_scenario(
    run: Run, fault: Callable[[], Awaitable[None]], size: tuple[int, int] = (16, 16), restarts: bool = False
) -> Outcome:
    """Submit TASKS tasks while `fault` runs, then observe every task and print the scenario line.
    `restarts`: the fault restarts services itself (their new processes are expected)."""
    pids = {name: process.pid for name, process in run.system.processes.items()}
    source = run.http_server.add(f"{run.prefix}/input.png", photo(size=size))
    run.began = time.monotonic()
    await asyncio.gather(submit_all(run, source), fault())

    events = await terminal_events(run)
    states, rerun = await final_states(run)
    left = await queued_messages(run)
    elapsed = time.monotonic() - run.began
    put_paths = Counter(r.path for r in list(run.http_server.requests) if r.method == "PUT")
    outcome = Outcome(
        name=run.name,
        task_ids=list(run.task_ids),
        expected={t: run.expected.get(t, "SUCCESS") for t in run.task_ids},
        puts={t: put_paths[f"/put/{run.outputs[t]}"] for t in run.task_ids},
        events=events,
        states=states,
        ghosts=[name for name in run.refused if put_paths[f"/put/{name}"]],
        refused=len(run.refused),
        rerun=rerun,
        left=left,
        exited={
            name: process.returncode
            for name, process in run.system.processes.items()
            if process.poll() is not None or (process.pid != pids.get(name) and not restarts)
        },
        elapsed_s=elapsed,
        logs=run.system.logs(),
    )
    (run.system.log_dir / "outcome.json").write_text(json.dumps(vars(outcome) | {"logs": None}, indent=1))
    print(
        f"\nscenario | tasks | lost | duplicated | time_s\n{outcome.name} | {len(outcome.task_ids)} | "
        f"{len(outcome.lost)} | {len(outcome.duplicated)} | {elapsed:.1f}\n"
        f"{outcome.name}: without a terminal event: {len(outcome.without_event)}; submissions refused "
        f"with 503 and retried: {outcome.refused} (written anyway: {len(outcome.ghosts)}); "
        f"KV states: {dict(Counter(states.values()))}; tasks with a stage run again: {rerun}"
    )
    return outcome


def assert_nothing_lost(outcome: Outcome) -> None:
    assert not outcome.exited, f"services exited: {outcome.exited}\n{outcome.logs}"
    assert len(outcome.task_ids) == TASKS
    assert not outcome.lost, f"{len(outcome.lost)} lost: {outcome.describe(outcome.lost)}"
    assert not outcome.ghosts, f"refused with 503 ('nothing was queued') yet written: {outcome.ghosts[:5]}"
    assert not outcome.left, f"left in the work queues: {outcome.left}\n{outcome.logs}"


def assert_nothing_duplicated(outcome: Outcome) -> None:
    assert not outcome.duplicated, f"{len(outcome.duplicated)} duplicated: {outcome.describe(outcome.duplicated)}"


def assert_one_terminal_event_each(outcome: Outcome) -> None:
    missing = outcome.without_event
    assert not missing, f"{len(missing)} without a terminal event: {outcome.describe(missing)}"
    wrong = [t for t in outcome.task_ids if outcome.events[t] != [outcome.expected[t]]]
    assert not wrong, outcome.describe(wrong)
