"""Reading py-spy's raw (collapsed) stacks: where a process spent its CPU samples.

Each line of a raw file is `frame;frame;...;leaf count`, a frame being `function (path:line)`.
`summarise` gives the share of samples by component (the leaf frame's library: where the CPU was
actually burnt), the top leaf functions, and the top functions of this project counted inclusively
(every sample with the function anywhere on its stack).

py-spy leaves out sleeping threads, but a thread just woken from a wait and queued for a CPU (on a
busy two-core machine, often) is sampled at the wait it is returning from: those samples (leaf in
WAIT_LEAVES) are counted apart, as `waiting`, and the shares are of the rest.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

# First match wins, so the more specific paths come first.
COMPONENTS: tuple[tuple[str, str], ...] = (
    ("/pydantic_core/", "pydantic"),
    ("/pydantic/", "pydantic"),
    ("/structlog/", "logging"),
    ("/logging/", "logging"),
    ("/nats/js/", "nats-py JetStream"),
    ("/nats/", "nats-py core"),
    ("/uvicorn/", "uvicorn/h11"),
    ("/h11/", "uvicorn/h11"),
    ("/starlette/", "fastapi/starlette"),
    ("/fastapi/", "fastapi/starlette"),
    ("/anyio/", "anyio"),
    ("/httpx/", "httpx/httpcore"),
    ("/httpcore/", "httpx/httpcore"),
    ("/asyncio/", "asyncio"),
    ("/json/", "json"),
    ("/msgpack/", "msgpack"),
    ("/PIL/", "image work (PIL/numpy/skimage/scipy)"),
    ("/numpy/", "image work (PIL/numpy/skimage/scipy)"),
    ("/skimage/", "image work (PIL/numpy/skimage/scipy)"),
    ("/scipy/", "image work (PIL/numpy/skimage/scipy)"),
    ("/torch/", "torch"),
    ("/prometheus_client/", "prometheus"),
    ("/concurrent/", "threads (to_thread)"),
    ("/threading.py", "threads (to_thread)"),
    ("/selectors.py", "asyncio"),
    ("/shared/", "shared/ (project)"),
    ("/services/", "services/ (project)"),
)


WAIT_LEAVES = frozenset(
    {
        ("EpollSelector.select", "selectors.py"),
        ("_PollLikeSelector.select", "selectors.py"),
        ("Condition.wait", "threading.py"),
        ("_worker", "concurrent/futures/thread.py"),
        ("SocketIO.readinto", "socket.py"),
    }
)


# On (nearly) every stack, so an inclusive share says nothing about them.
NOT_INCLUSIVE = frozenset({"asyncio", "other", "shared/ (project)", "services/ (project)", "threads (to_thread)"})


@dataclass
class Summary:
    samples: int  # on-CPU samples, the waits excluded
    waiting: int  # samples whose leaf is a wait (runnable but not yet running)
    components: list[tuple[str, float]]  # (component, share of samples) by leaf frame
    inclusive: list[tuple[str, float]]  # (component, share of samples with it anywhere on the stack)
    leaves: list[tuple[str, float]]  # (function, share) by leaf frame
    project: list[tuple[str, float]]  # (function in shared/ or services/, inclusive share)


def component(path: str) -> str:
    path = "/" + path  # py-spy prints paths relative to site-packages, the stdlib or the working dir
    for marker, name in COMPONENTS:
        if marker in path:
            return name
    return "other"


def _parse_frame(frame: str) -> tuple[str, str]:
    """('function', 'path') from 'function (path:line)'."""
    function, _, where = frame.rpartition(" (")
    if not function:
        return frame, ""
    path = where.rstrip(")").rsplit(":", 1)[0]
    return function, path


def _short(function: str, path: str) -> str:
    return f"{function} ({path})"


def summarise(raw: Path, top: int = 10) -> Summary:
    components: Counter[str] = Counter()
    leaves: Counter[str] = Counter()
    project: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = waiting = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_parse_frame(f) for f in stack.split(";")]
        leaf_function, leaf_path = frames[-1]
        if (leaf_function, leaf_path) in WAIT_LEAVES:
            waiting += count
            continue
        total += count
        # Under uvloop the loop itself is C: its work (I/O, callbacks' plumbing) shows as Runner.run.
        native_loop = (leaf_function, leaf_path) == ("Runner.run", "asyncio/runners.py")
        components["event loop (uvloop, C)" if native_loop else component(leaf_path)] += count
        leaves[_short(leaf_function, leaf_path)] += count
        for name in {component(p) for _, p in frames} - NOT_INCLUSIVE:
            inclusive[name] += count
        seen = {_short(f, p) for f, p in frames if p.startswith(("shared/", "services/"))}
        for name in seen:
            project[name] += count

    def shares(counter: Counter[str], n: int) -> list[tuple[str, float]]:
        return [(name, count / total) for name, count in counter.most_common(n)] if total else []

    return Summary(
        total, waiting, shares(components, 20), shares(inclusive, 20), shares(leaves, top), shares(project, top)
    )
