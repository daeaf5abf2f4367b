"""Talking to the outside world: what its failures mean.

The fetcher (reads) and the uploader (writes) share this: the remote side's own fault (4xx,
missing object) is an InputError; the network's or the server's (5xx, 429, throttling, timeouts,
refused connections) a RetryableError; this deployment's S3 settings (no credentials, a malformed
endpoint, keys or permissions the server refuses) a ConfigurationError, which says what to set: no
retry can pass until someone changes them. URLs in messages go through `safe_url`, which strips
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
from botocore.exceptions import (
    ClientError,
    ConfigParseError,
    CredentialRetrievalError,
    HTTPClientError,
    IncompleteReadError,
    InvalidConfigError,
    InvalidRegionError,
    NoCredentialsError,
    NoRegionError,
    ParamValidationError,
    PartialCredentialsError,
    ProfileNotFound,
)
from botocore.exceptions import ConnectionError as BotoConnectionError
from botocore.utils import is_valid_endpoint_url, is_valid_ipv6_endpoint_url

from shared.runtime.errors import MAX_BACKOFF_S, ConfigurationError, InputError, RetryableError, TaskError

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
S3_CREDENTIALS_ADVICE = (
    "S3 credentials are not configured: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE), "
    "and AWS_ENDPOINT_URL_S3 for a non-AWS server"
)
_FILES_ADVICE = "check AWS_PROFILE, AWS_CONFIG_FILE and AWS_SHARED_CREDENTIALS_FILE"
# The server's answers that mean our keys, clock or region, not the object: the same on every retry.
_S3_REFUSED_CODES = {
    "InvalidAccessKeyId": "the S3 server does not know the access key: check AWS_ACCESS_KEY_ID, and that "
    "AWS_ENDPOINT_URL_S3 names the server it belongs to",
    "SignatureDoesNotMatch": "the S3 server refused the request's signature: check AWS_SECRET_ACCESS_KEY "
    "(it must be the access key's own secret)",
    "ExpiredToken": "the S3 session token has expired: renew AWS_SESSION_TOKEN, or unset it with long-term keys",
    "InvalidToken": "the S3 server refused the session token: check AWS_SESSION_TOKEN",
    "TokenRefreshRequired": "the S3 session token has expired: renew AWS_SESSION_TOKEN",
    "RequestTimeTooSkewed": "this host's clock is too far from the S3 server's: synchronise it (NTP)",
    "AuthorizationHeaderMalformed": "the S3 server refused the request's credential scope: check "
    "AWS_DEFAULT_REGION against the bucket's region",
}


class S3SettingsError(Exception):
    """This deployment's S3 settings cannot work, found before any request (by shared.egress.s3)."""


# This deployment's S3 settings cannot work, whatever the object (botocore's word, or S3Client's): no retry helps.
_S3_SETUP_ERRORS = (
    NoCredentialsError,
    PartialCredentialsError,
    NoRegionError,
    InvalidRegionError,
    ProfileNotFound,
    ConfigParseError,
    InvalidConfigError,
    S3SettingsError,
)
# What an S3 call can raise that says something about the request, the settings or the network (other
# botocore errors are bugs and propagate unchanged).
S3_ERRORS = (
    ClientError,
    ParamValidationError,
    *_S3_SETUP_ERRORS,
    CredentialRetrievalError,
    BotoConnectionError,
    HTTPClientError,
    IncompleteReadError,
    aiohttp.ClientError,
    asyncio.TimeoutError,
)


def s3_endpoint() -> str | None:
    """The deployment's S3 endpoint URL, from boto's standard variables (None: AWS itself)."""
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")


def s3_endpoint_problem() -> str | None:
    """Why the S3 endpoint URL in the environment cannot work (None: it can, or there is none).

    Botocore refuses some malformed URLs when the client is made, with a bare ValueError, and others
    only at the first request; this says so before either, naming the variable and what it needs.
    """
    endpoint = s3_endpoint()
    if endpoint is None:
        return None
    variable = "AWS_ENDPOINT_URL_S3" if os.environ.get("AWS_ENDPOINT_URL_S3") else "AWS_ENDPOINT_URL"
    try:
        parts = urlsplit(endpoint)
        parts.port  # noqa: B018  # read to have it checked: "Port out of range" is a ValueError
    except ValueError as exc:
        why = str(exc)
    else:
        if parts.scheme not in ("http", "https"):
            why = "it needs http:// or https:// and a host"
        elif parts.username is not None or parts.password is not None:
            why = "it carries a user name or password (keys go in AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)"
        elif not (is_valid_endpoint_url(endpoint) or is_valid_ipv6_endpoint_url(endpoint)):
            why = "its host is not a valid host name or address"
        else:
            return None
    return (
        f"the S3 endpoint URL {safe_url(endpoint)!r} ({variable}) is malformed: {why}; "
        "set it to the server's URL, such as http://seaweedfs:8333"
    )


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


def s3_error(exc: BaseException, role: str, url: str, bucket: str) -> TaskError:
    """The error one of S3_ERRORS stands for, for the `role` ("input" or "output") object at `url` in `bucket`."""
    what = f"{role} {url}"
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code = error.get("Code", "Unknown")
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        message = f"{what}: {code}" + (f" ({error['Message']})" if error.get("Message") else "")
        if code in _S3_REFUSED_CODES:
            return ConfigurationError(f"{message}: {_S3_REFUSED_CODES[code]}")
        if code == "AccessDenied":
            return ConfigurationError(f"{message}: {_denied_advice(role, bucket)}")
        if code in _S3_RETRYABLE_CODES or status >= 500 or status == 429:
            return RetryableError(message)
        return InputError(message)  # NoSuchKey, NoSuchBucket and other 4xx
    if isinstance(exc, ParamValidationError):
        return InputError(f"{what}: {exc}")
    if isinstance(exc, NoCredentialsError | PartialCredentialsError):
        found = f" ({exc})" if isinstance(exc, PartialCredentialsError) else ""
        return ConfigurationError(f"{what}: {S3_CREDENTIALS_ADVICE}{found}")
    if isinstance(exc, NoRegionError | InvalidRegionError):
        return ConfigurationError(
            f"{what}: the S3 region is not usable ({exc}): set AWS_DEFAULT_REGION, e.g. us-east-1"
        )
    if isinstance(exc, ProfileNotFound | ConfigParseError):
        return ConfigurationError(f"{what}: the AWS configuration is not usable ({exc}): {_FILES_ADVICE}")
    if isinstance(exc, _S3_SETUP_ERRORS):  # InvalidConfigError, S3SettingsError
        return ConfigurationError(f"{what}: {exc}")
    if isinstance(exc, CredentialRetrievalError):
        # A credential source that did not answer (instance or container role, credential_process): it may next time.
        return RetryableError(
            f"{what}: S3 credentials could not be fetched ({exc}): check where they come from "
            "(the instance or container role, or AWS_PROFILE's credential_process)"
        )
    return RetryableError(f"{what}: {type(exc).__name__} {exc}".rstrip())


def _denied_advice(role: str, bucket: str) -> str:
    if role == "output":
        return f"the S3 credentials may not write to bucket {bucket!r}: check that they are granted s3:PutObject on it"
    return (
        f"the S3 credentials may not read from bucket {bucket!r}: check that they are granted s3:GetObject on it "
        "(without s3:ListBucket, S3 answers AccessDenied for a key that does not exist, too)"
    )


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
