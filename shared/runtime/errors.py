"""Errors a stage can raise, and what each one does to the message.

    TaskError                   base: carries a readable message for the task's `error`
    ├── PermanentError          will fail again on retry -> task FAILURE at once (dead letter, ack)
    │   ├── InputError          the input is not usable (404, not an image, too large, bad URL)
    │   └── ConfigurationError  the request asks for something this deployment lacks (missing weights)
    └── RetryableError(delay_s) may pass later (network, 5xx, throttling) -> msg.nak(delay)
                                until the retry budget is spent, then FAILURE with the last error;
                                a delay is at most MAX_BACKOFF_S, whoever chose it

Anything else raised by a handler is a bug: it is treated as retryable, so a transient bug
cannot lose a task, and logged with its traceback.
"""

from __future__ import annotations

# The longest a retry waits: the stage backoff's cap, and the most a server's Retry-After is granted
# (a year-long one would park the task, counted against the queue-depth limit, for a year).
MAX_BACKOFF_S = 30.0


class TaskError(Exception):
    """A failure with a message meant for the client (it becomes the task's `error`)."""


class PermanentError(TaskError):
    """Retrying cannot help: the task fails at once."""


class InputError(PermanentError):
    """The task's input (URL, bytes, arguments) cannot be processed."""


class ConfigurationError(PermanentError):
    """The deployment lacks something the task needs (e.g. model weights)."""


class RetryableError(TaskError):
    """A transient failure: the message is redelivered after `delay_s` (None: the stage's backoff)."""

    def __init__(self, message: str, delay_s: float | None = None) -> None:
        super().__init__(message)
        self.delay_s = delay_s
