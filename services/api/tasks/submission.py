"""Turning a submission into a validated task, or a 400 naming the field at fault.

Everything that can be known wrong at submission is refused here, so that a bad request never
becomes a task that fails later: the task name, both URLs, and every upscaler option.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pydantic import ValidationError

from services.api.schemas import CALLBACK_PATTERN, SubmitTaskRequest
from shared.contracts.destinations import HttpPut, LocalFile, parse_destination
from shared.contracts.options import validate_options
from shared.egress.localfiles import file_url_path, resolve_within, target_within
from shared.egress.netguard import AddressPolicy
from shared.images import OUTPUT_FORMATS, format_for_url
from shared.messages import TASK_NAME, UpscaleOptions
from shared.runtime.errors import InputError

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


def _check_options(kwargs: dict[str, Any], output_url: str, max_output_pixels: int | None) -> UpscaleOptions:
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
        validate_options(options, max_output_pixels)
    except ValueError as exc:
        raise SubmissionError(str(exc)) from exc
    if options.output_format is None and format_for_url(output_url) is None:
        raise SubmissionError(
            f"args[1]: cannot tell the output format from {output_url!r}; end the key in "
            f".png, .jpg or .webp, or set kwargs.output_format to one of {', '.join(OUTPUT_FORMATS)}"
        )
    return options


def _check_reachable(url: str, index: int, role: str, policy: AddressPolicy | None, file_root: Path | None) -> None:
    """Refuse now what the fetcher/uploader would refuse anyway without a DNS lookup (a literal
    private address, a loopback name, a file:// path outside TM_FILE_ROOT, or any while it is unset):
    a 400 at once instead of a task that fails later. Names are still checked where they are connected
    to, and file:// paths where they are opened (the workers' filesystem is the one that counts)."""
    if policy is None:
        return
    scheme = urlsplit(url).scheme.lower()
    try:
        if scheme == "file" and role == "input":
            resolve_within(file_root, file_url_path(url, role), role)
        elif scheme == "file":  # an output's own name is replaced, not followed: as the uploader writes it
            target_within(file_root, file_url_path(url, role), role)
        elif scheme in ("http", "https"):
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
    request: SubmitTaskRequest,
    s3_endpoint: str | None,
    policy: AddressPolicy | None = None,
    file_root: Path | None = None,
    max_output_pixels: int | None = None,
) -> tuple[str, str, UpscaleOptions]:
    """Return (input_url, output_url, options) or raise SubmissionError.

    Without a `policy` the URLs' destinations are not checked; with one, file:// URLs must lie inside
    `file_root` (TM_FILE_ROOT), and are refused when it is None. With `max_output_pixels`
    (TM_MAX_OUTPUT_PIXELS) a target box larger than that is refused."""
    if request.task_name not in KNOWN_TASKS:
        raise SubmissionError(f"task_name: unknown task {request.task_name!r}; known: {', '.join(KNOWN_TASKS)}")
    if len(request.args) != 2:
        raise SubmissionError(f"args: expected [input_url, output_url], got {len(request.args)} item(s)")
    input_url = _check_input_url(request.args[0])
    output_url = _check_output_url(request.args[1], s3_endpoint)
    _check_reachable(input_url, 0, "input", policy, file_root)
    if isinstance(parse_destination(output_url, s3_endpoint=s3_endpoint), HttpPut | LocalFile):
        _check_reachable(output_url, 1, "output", policy, file_root)
    return input_url, output_url, _check_options(request.kwargs, output_url, max_output_pixels)
