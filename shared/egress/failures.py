"""Talking to the outside world: what its failures mean.

The fetcher (reads) and the uploader (writes) share this: the remote side's own fault (4xx,
missing object) is an InputError; the network's or the server's (5xx, 429, throttling, timeouts,
refused connections) a RetryableError. URLs in messages go through `safe_url`, which strips
credentials. Which hosts may be reached at all is `shared.egress.netguard`'s business, and the HTTP
client that enforces it on every connection `shared.egress.transport`'s.
"""

from __future__ import annotations

import asyncio
import math
import os
from collections.abc import Mapping
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from urllib.parse import parse_qsl, urlsplit, urlunsplit

import aiohttp
import httpx
from botocore.exceptions import ClientError, HTTPClientError, IncompleteReadError, ParamValidationError
from botocore.exceptions import ConnectionError as BotoConnectionError

from shared.runtime.errors import MAX_BACKOFF_S, InputError, RetryableError, TaskError

# Query parameters that make a URL a credential (presigned S3, SAS-style tokens): kept out of messages.
_SECRET_PARAMS = frozenset(
    {
        "x-amz-signature",
        "x-amz-credential",
        "x-amz-security-token",
        "signature",
        "awsaccesskeyid",
        "sig",
        "token",
    }
)
_S3_RETRYABLE_CODES = frozenset(
    {
        "SlowDown", "Throttling", "ThrottlingException", "RequestLimitExceeded", "TooManyRequestsException",
        "RequestTimeout", "InternalError", "ServiceUnavailable", "503",
    }
)  # fmt: skip
# What an S3 call can raise that says something about the request or the network (other botocore
# errors, such as missing credentials, are deployment bugs and propagate unchanged).
S3_ERRORS = (
    ClientError,
    ParamValidationError,
    BotoConnectionError,
    HTTPClientError,
    IncompleteReadError,
    aiohttp.ClientError,
    asyncio.TimeoutError,
)


def s3_endpoint() -> str | None:
    """The deployment's S3 endpoint URL, from boto's standard variables (None: AWS itself)."""
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")


def http_status_error(status: int, url: str, headers: Mapping[str, str], *, role: str) -> TaskError | None:
    """The error a non-2xx HTTP status stands for (None for 2xx); `role` is "input" or "output"."""
    if status < 300:
        return None
    # 408 is the server timing out on us: as transient as a 503.
    if status >= 500 or status in (408, 429):
        asked = retry_after_s(headers.get("retry-after"), cap_s=math.inf)
        if asked is None:
            return RetryableError(f"{role} URL returned HTTP {status}: {safe_url(url)}")
        # The stage runner grants at most TM_RETRY_MAX_DELAY_S of it.
        capped = "; retries wait at most TM_RETRY_MAX_DELAY_S" if asked > MAX_BACKOFF_S else ""
        return RetryableError(
            f"{role} URL returned HTTP {status} (asked to retry after {asked:.0f} s{capped}): {safe_url(url)}",
            min(asked, MAX_BACKOFF_S),
        )
    return InputError(f"{role} URL returned HTTP {status}: {safe_url(url)}")


def http_transport_error(exc: httpx.HTTPError, url: str, *, role: str) -> TaskError:
    """The error an httpx exception stands for: the URL's fault is permanent, the network's is not."""
    what = f"{role} URL {safe_url(url)}"
    if isinstance(exc, httpx.UnsupportedProtocol | httpx.DecodingError | httpx.TooManyRedirects):
        return InputError(f"{what}: {exc}")
    return RetryableError(f"{what}: {type(exc).__name__} {exc}".rstrip())


def s3_error(exc: BaseException, what: str) -> TaskError:
    """The error one of S3_ERRORS stands for; `what` names the object, e.g. "input s3://b/k"."""
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code = error.get("Code", "Unknown")
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        message = f"{what}: {code}" + (f" ({error['Message']})" if error.get("Message") else "")
        if code in _S3_RETRYABLE_CODES or status >= 500 or status == 429:
            return RetryableError(message)
        return InputError(message)  # NoSuchKey, NoSuchBucket, AccessDenied and other 4xx
    if isinstance(exc, ParamValidationError):
        return InputError(f"{what}: {exc}")
    return RetryableError(f"{what}: {type(exc).__name__} {exc}".rstrip())


def retry_after_s(value: str | None, cap_s: float = MAX_BACKOFF_S) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or HTTP-date), at most `cap_s`; None when absent
    or unreadable. The server chooses it, so it is capped: it must not decide how long a task parks."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():  # not "²", which isdigit() but float() refuses
        return min(float(value), cap_s)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return min(max(0.0, (when - datetime.now(UTC)).total_seconds()), cap_s)


def safe_url(url: str) -> str:
    """`url` fit for messages and logs: no user:password, no query when it carries a signature or token."""
    try:
        parts = urlsplit(url)
    except ValueError:  # e.g. an unclosed "[": strip what could be a credential without a parser
        scheme, _, rest = url.partition("://")
        netloc, slash, path = rest.split("?", 1)[0].partition("/")
        return f"{scheme}://{netloc.rpartition('@')[2]}{slash}{path}" if rest else url.split("?", 1)[0]
    netloc = parts.netloc.rpartition("@")[2]
    keys = {name.lower() for name, _ in parse_qsl(parts.query, keep_blank_values=True)}
    query = "(signed query omitted)" if keys & _SECRET_PARAMS else parts.query
    return urlunsplit(parts._replace(netloc=netloc, query=query))
