"""Where a task's output goes: an output URL parsed into an S3 object, an HTTP PUT or a local file.

Pure parsing, no I/O. S3-shaped URLs (s3://, the AWS endpoint forms, or path-style URLs on the
configured S3 endpoint) become S3Target so the upload is signed with this deployment's credentials;
presigned URLs carry their own signature and become HttpPut, as does any other http(s) URL.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl, unquote, urlsplit

from shared.runtime.errors import InputError

# The AWS S3 host forms: s3, s3.<region>, s3-<region>, s3.dualstack.<region>, s3-fips..., and .com.cn.
_AWS_S3_HOST = r"s3(?:-fips)?(?:[.-]dualstack)?(?:[.-][a-z0-9-]+)?\.amazonaws\.com(?:\.cn)?"
_PATH_STYLE_HOST = re.compile(rf"^{_AWS_S3_HOST}$")
_VIRTUAL_HOST = re.compile(rf"^(?P<bucket>.+)\.{_AWS_S3_HOST}$")
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_PRESIGN_PARAMS = frozenset({"x-amz-signature", "signature"})
_DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(frozen=True)
class S3Target:
    """An object written with this deployment's S3 client and credentials."""

    bucket: str
    key: str


@dataclass(frozen=True)
class HttpPut:
    """A URL that takes a plain PUT of the bytes (presigned, or any non-S3 HTTP endpoint)."""

    url: str


@dataclass(frozen=True)
class LocalFile:
    """A path on the uploader's own filesystem (only for deployments that allow it)."""

    path: Path


Destination = S3Target | HttpPut | LocalFile


def parse_destination(url: str, *, s3_endpoint: str | None = None) -> Destination:
    """Classify an output URL; `s3_endpoint` is the deployment's S3 endpoint URL (AWS_ENDPOINT_URL_S3).

    Raises InputError for an unsupported scheme, a URL with no object key, or an invalid bucket name.
    """
    try:
        parts = urlsplit(url)
    except ValueError as exc:  # e.g. an unclosed IPv6 bracket
        raise InputError(f"invalid output URL ({exc}): {url}") from exc
    scheme = parts.scheme.lower()
    if scheme == "s3":
        return _s3_target(parts.netloc, parts.path, url)
    if scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise InputError(f"file:// output URL names a remote host: {url}")
        if not parts.path or parts.path.endswith("/"):
            raise InputError(f"file:// output URL has no file name: {url}")
        return LocalFile(Path(unquote(parts.path)))
    if scheme not in ("http", "https"):
        raise InputError(f"unsupported output URL scheme {scheme or '(none)'!r}: {url}")
    try:
        host, port = (parts.hostname or "").rstrip("."), parts.port
    except ValueError as exc:
        raise InputError(f"invalid output URL ({exc}): {url}") from exc
    if not host:
        raise InputError(f"output URL has no host: {url}")
    if {name.lower() for name, _ in parse_qsl(parts.query)} & _PRESIGN_PARAMS:
        return HttpPut(url)  # presigned: the signature covers this exact URL, so PUT it as it is
    if _PATH_STYLE_HOST.match(host) or _same_endpoint(scheme, host, port, s3_endpoint):
        bucket, _, key = parts.path.removeprefix("/").partition("/")
        return _s3_target(unquote(bucket), "/" + key, url)
    if virtual := _VIRTUAL_HOST.match(host):
        return _s3_target(virtual["bucket"], parts.path, url)
    return HttpPut(url)


def _s3_target(bucket: str, path: str, url: str) -> S3Target:
    if not _valid_bucket(bucket):
        raise InputError(f"invalid S3 bucket name {bucket!r} in output URL: {url}")
    key = unquote(path.removeprefix("/"))
    if not key or key.endswith("/"):
        raise InputError(f"output URL names no object key: {url}")
    return S3Target(bucket, key)


def _valid_bucket(name: str) -> bool:
    """S3's rules: 3-63 of [a-z0-9.-], alphanumeric at both ends, no "..", not an IP address."""
    if not _BUCKET.match(name) or ".." in name:
        return False
    try:
        ipaddress.IPv4Address(name)
    except ValueError:
        return True
    return False


def _same_endpoint(scheme: str, host: str, port: int | None, s3_endpoint: str | None) -> bool:
    """Whether host:port is the configured endpoint's (default ports filled in from each scheme)."""
    if not s3_endpoint:
        return False
    endpoint = urlsplit(s3_endpoint)
    if not endpoint.hostname:
        return False
    endpoint_port = endpoint.port or _DEFAULT_PORTS.get(endpoint.scheme.lower())
    return (host, port or _DEFAULT_PORTS[scheme]) == (endpoint.hostname.rstrip("."), endpoint_port)
