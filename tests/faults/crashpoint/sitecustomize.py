"""Fault injection for the fault suite: a process that SIGKILLs itself at one exact point.

tests/faults/test_terminal_events.py puts this directory first on a service's PYTHONPATH, so Python
imports this module at start-up, before `python -m services.<name>` runs. With
TM_TEST_CRASH_AFTER_TERMINAL_WRITES=N the process kills itself (SIGKILL: no clean-up of any kind) on
its Nth terminal state write, after the state is in the KV bucket and before its events are published
or its objects removed: the narrowest window a crash can hit, which a signal sent from outside
cannot aim at. Test use only; nothing in shared/ or services/ knows about it.
"""

from __future__ import annotations

import os
import signal

_AFTER = int(os.environ.get("TM_TEST_CRASH_AFTER_TERMINAL_WRITES", "0"))

if _AFTER:
    from shared.taskstate import store as tasks

    _publish_event = tasks.TaskStore.publish_event
    _written = [0]

    async def _publish_event_or_die(self, status, change=None):  # type: ignore[no-untyped-def]
        _written[0] += 1
        if _written[0] >= _AFTER:
            os.kill(os.getpid(), signal.SIGKILL)
        await _publish_event(self, status, change)

    tasks.TaskStore.publish_event = _publish_event_or_die  # type: ignore[method-assign]
