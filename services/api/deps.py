"""What route handlers depend on, built once in the app's lifespan."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated

from fastapi import Depends, Request

from services.api.dashboard.history import History
from services.api.metrics import ApiMetrics
from services.api.tasks.etareads import EtaSource
from services.api.tasks.index import TaskIndex
from shared.config import Settings
from shared.nats import Topology
from shared.taskstate.store import TaskStore

if TYPE_CHECKING:
    from services.api.guards.backpressure import QueueDepth


@dataclass
class ApiContext:
    settings: Settings
    topology: Topology
    store: TaskStore
    metrics: ApiMetrics
    queue: QueueDepth
    index: TaskIndex = field(default_factory=TaskIndex)  # every stored task, for listing
    history: History = field(default_factory=History)  # the last hour, for the dashboard's charts
    eta: EtaSource = field(init=False)  # a task's estimated completion, from the topology's workers and queues

    def __post_init__(self) -> None:
        self.eta = EtaSource(self.topology)
        self.index.listeners.append(self.history.task_changed)


async def get_context(request: Request) -> ApiContext:
    # async: FastAPI runs a plain `def` dependency in a worker thread, a thread hop per request.
    return request.app.state.context


ContextDep = Annotated[ApiContext, Depends(get_context)]
