"""Turning a submission into a validated task, or a 400 naming the field at fault.

Everything that can be known wrong at submission is refused here, so that a bad request never
becomes a task that fails later: the task name, both URLs, and every upscaler option.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

from pydantic import ValidationError

from services.api.schemas import CALLBACK_PATTERN, SubmitTaskRequest
from services.uploader.destinations import HttpPut, LocalFile, parse_destination
from services.upscaler.options import validate_options
from shared.errors import InputError
from shared.images import OUTPUT_FORMATS, format_for_url
from shared.messages import TASK_NAME, UpscaleOptions
from shared.netguard import AddressPolicy

INPUT_SCHEMES = ("http", "https", "s3", "file")
KNOWN_TASKS = (TASK_NAME,)


class SubmissionError(ValueError):
    """A 400: the message names the offending field."""


def _check_input_url(url: Any) -> str:
    if not isinstance(url, str) or not url:
        raise SubmissionError("args[0]: the input URL must be a non-empty string")
    try:
        parts = urlsplit(url)
    except ValueError as exc:  # e.g. a bracketed host that is no IPv6 address
        raise SubmissionError(f"args[0]: invalid input URL ({exc}): {url!r}") from exc
    if parts.scheme not in INPUT_SCHEMES:
        raise SubmissionError(f"args[0]: unsupported URL scheme {parts.scheme!r}; use {', '.join(INPUT_SCHEMES)}")
    if parts.scheme != "file" and not parts.netloc:
        raise SubmissionError(f"args[0]: URL has no host or bucket: {url!r}")
    return url


def _check_output_url(url: Any, s3_endpoint: str | None) -> str:
    if not isinstance(url, str) or not url:
        raise SubmissionError("args[1]: the output URL must be a non-empty string")
    try:
        parse_destination(url, s3_endpoint=s3_endpoint)
    except InputError as exc:
        raise SubmissionError(f"args[1]: {exc}") from exc
    return url


def _check_options(kwargs: dict[str, Any], output_url: str) -> UpscaleOptions:
    known = set(UpscaleOptions.model_fields)
    unknown = sorted(set(kwargs) - known)
    if unknown:
        raise SubmissionError(f"kwargs.{unknown[0]}: unknown option; known: {', '.join(sorted(known))}")
    try:
        options = UpscaleOptions.model_validate(kwargs, strict=True)  # "2" is not a number here
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(part) for part in first["loc"])
        raise SubmissionError(f"kwargs.{field}: {first['msg']}") from exc
    try:
        validate_options(options)
    except ValueError as exc:
        raise SubmissionError(str(exc)) from exc
    if options.output_format is None and format_for_url(output_url) is None:
        raise SubmissionError(
            f"args[1]: cannot tell the output format from {output_url!r}; end the key in "
            f".png, .jpg or .webp, or set kwargs.output_format to one of {', '.join(OUTPUT_FORMATS)}"
        )
    return options


def _check_reachable(url: str, index: int, role: str, policy: AddressPolicy | None) -> None:
    """Refuse now what the fetcher/uploader would refuse anyway without a DNS lookup (a literal
    private address, a loopback name, file:// where private networks are closed): a 400 at once
    instead of a task that fails later. Names are still checked where they are connected to."""
    if policy is None:
        return
    scheme = urlsplit(url).scheme.lower()
    if scheme == "file" and not policy.allow_private:
        closed = "TM_FETCH_ALLOW_PRIVATE_NETWORKS is off"
        raise SubmissionError(f"args[{index}]: file:// {role} URLs are not allowed here ({closed})")
    if scheme in ("http", "https"):
        try:
            policy.check_url(url, role)
        except InputError as exc:
            raise SubmissionError(f"args[{index}]: {exc}") from exc


def validate_callback(request: SubmitTaskRequest, policy: AddressPolicy | None = None) -> str | None:
    """The webhook URL, or None; refused by the same address rules as the task's URLs (the notifier
    checks again, at connect time, the address it actually reaches)."""
    url = request.callback_url
    if url is None:
        return None
    if not re.fullmatch(CALLBACK_PATTERN, url):
        raise SubmissionError("callback_url: must be an http or https URL with a host")
    if policy is not None:
        try:
            policy.check_url(url, "callback")
        except InputError as exc:
            raise SubmissionError(f"callback_url: {exc}") from exc
    return url


def validate_submission(
    request: SubmitTaskRequest, s3_endpoint: str | None, policy: AddressPolicy | None = None
) -> tuple[str, str, UpscaleOptions]:
    """Return (input_url, output_url, options) or raise SubmissionError."""
    if request.task_name not in KNOWN_TASKS:
        raise SubmissionError(f"task_name: unknown task {request.task_name!r}; known: {', '.join(KNOWN_TASKS)}")
    if len(request.args) != 2:
        raise SubmissionError(f"args: expected [input_url, output_url], got {len(request.args)} item(s)")
    input_url = _check_input_url(request.args[0])
    output_url = _check_output_url(request.args[1], s3_endpoint)
    _check_reachable(input_url, 0, "input", policy)
    if isinstance(parse_destination(output_url, s3_endpoint=s3_endpoint), HttpPut | LocalFile):
        _check_reachable(output_url, 1, "output", policy)
    return input_url, output_url, _check_options(request.kwargs, output_url)
