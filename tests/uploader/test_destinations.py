"""Output URL parsing: which URLs are S3 objects, which are plain PUTs, which are local files."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from shared.contracts.destinations import (
    HttpPut,
    LocalFile,
    S3Target,
    parse_destination,
)
from shared.images import format_for_url
from shared.runtime.errors import InputError

ENDPOINT = "http://127.0.0.1:8333"


@pytest.mark.parametrize(
    ("url", "bucket", "key"),
    [
        ("s3://my-bucket/out/cat.png", "my-bucket", "out/cat.png"),
        ("s3://my.bucket/a%20b/c%2Bd.png", "my.bucket", "a b/c+d.png"),
        ("https://s3.amazonaws.com/my-bucket/cat.png", "my-bucket", "cat.png"),
        ("https://s3.eu-west-1.amazonaws.com/my-bucket/dir/cat.png", "my-bucket", "dir/cat.png"),
        ("https://s3-eu-west-1.amazonaws.com/my-bucket/cat.png", "my-bucket", "cat.png"),
        ("https://s3.dualstack.us-east-2.amazonaws.com/my-bucket/cat.png", "my-bucket", "cat.png"),
        ("https://s3.cn-north-1.amazonaws.com.cn/my-bucket/cat.png", "my-bucket", "cat.png"),
        ("https://my-bucket.s3.amazonaws.com/cat.png", "my-bucket", "cat.png"),
        ("https://my-bucket.s3.us-west-2.amazonaws.com/a/b/cat.png", "my-bucket", "a/b/cat.png"),
        ("https://my-bucket.s3-us-west-2.amazonaws.com/cat.png", "my-bucket", "cat.png"),
        ("https://my-bucket.s3.dualstack.us-west-2.amazonaws.com/cat.png", "my-bucket", "cat.png"),
        ("https://my.dotted.bucket.s3.amazonaws.com/cat.png", "my.dotted.bucket", "cat.png"),
        ("HTTPS://MY-BUCKET.S3.AMAZONAWS.COM/Cat.PNG", "my-bucket", "Cat.PNG"),
        ("https://my-bucket.s3.amazonaws.com/sp%C3%A4ce%20x.png", "my-bucket", "späce x.png"),
        ("http://127.0.0.1:8333/my-bucket/out/cat.png", "my-bucket", "out/cat.png"),
    ],
)
def test_s3_shaped_urls(url: str, bucket: str, key: str) -> None:
    assert parse_destination(url, s3_endpoint=ENDPOINT) == S3Target(bucket, key)


@pytest.mark.parametrize(
    ("url", "endpoint"),
    [
        ("https://minio.internal/bucket/key.png", "https://minio.internal"),
        ("https://minio.internal:443/bucket/key.png", "https://minio.internal"),
        ("http://minio.internal/bucket/key.png", "http://minio.internal:80/"),
    ],
)
def test_path_style_on_configured_endpoint_with_default_ports(url: str, endpoint: str) -> None:
    assert parse_destination(url, s3_endpoint=endpoint) == S3Target("bucket", "key.png")


@pytest.mark.parametrize(
    "url",
    [
        # Presigned: the signature is for this exact URL, even on the S3 endpoint itself.
        "http://127.0.0.1:8333/my-bucket/cat.png?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Signature=abc",
        "https://my-bucket.s3.amazonaws.com/cat.png?AWSAccessKeyId=AK&Signature=abc&Expires=1",
        "https://s3.amazonaws.com/my-bucket/cat.png?x-amz-signature=abc",
        # Not S3-shaped: a plain PUT.
        "https://uploads.example.com/put/cat.png",
        "http://127.0.0.1:9999/my-bucket/cat.png",
        "https://amazonaws.com.example.org/bucket/cat.png",
    ],
)
def test_http_put_urls(url: str) -> None:
    assert parse_destination(url, s3_endpoint=ENDPOINT) == HttpPut(url)


def test_endpoint_urls_without_configured_endpoint_are_plain_puts() -> None:
    url = "http://127.0.0.1:8333/my-bucket/cat.png"
    assert parse_destination(url) == HttpPut(url)


@pytest.mark.parametrize(
    ("url", "path"),
    [
        ("file:///srv/out/cat.png", "/srv/out/cat.png"),
        ("file://localhost/srv/out/a%20b.png", "/srv/out/a b.png"),
    ],
)
def test_local_files(url: str, path: str) -> None:
    assert parse_destination(url) == LocalFile(Path(path))


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("s3://my-bucket", "no object key"),
        ("s3://my-bucket/", "no object key"),
        ("s3://my-bucket/dir/", "no object key"),
        ("https://my-bucket.s3.amazonaws.com/", "no object key"),
        ("https://s3.amazonaws.com/my-bucket", "no object key"),
        ("https://s3.amazonaws.com/", "bucket name"),
        ("s3://ab/key.png", "bucket name"),
        ("s3://My_Bucket/key.png", "bucket name"),
        ("s3://-bucket/key.png", "bucket name"),
        ("s3://bucket-/key.png", "bucket name"),
        ("s3://my..bucket/key.png", "bucket name"),
        ("s3://192.168.1.1/key.png", "bucket name"),
        (f"s3://{'a' * 64}/key.png", "bucket name"),
        ("ftp://host/key.png", "unsupported output URL scheme 'ftp'"),
        ("cat.png", "unsupported output URL scheme '(none)'"),
        ("https:///no-host.png", "no host"),
        ("http://host:notaport/x.png", "invalid output URL"),
        ("http://[::1/x.png", "invalid output URL (Invalid IPv6 URL)"),
        ("gopher://host:70/_x.png", "unsupported output URL scheme 'gopher'"),
        ("file://remote/srv/x.png", "remote host"),
        ("file:///srv/out/", "no file name"),
    ],
)
def test_invalid_urls(url: str, message: str) -> None:
    with pytest.raises(InputError, match=re.escape(message)):
        parse_destination(url, s3_endpoint=ENDPOINT)


@pytest.mark.parametrize(
    ("url", "fmt"),
    [
        ("s3://b/x/cat.png", "png"),
        ("s3://b/cat.JPG", "jpeg"),
        ("https://h/cat.jpeg?X-Amz-Signature=abc.png", "jpeg"),
        ("file:///tmp/cat.WebP", "webp"),
        ("https://h/cat%2Epng", "png"),
        ("https://h/cat.gif", None),
        ("https://h/cat", None),
        ("https://h/dir.png/", None),
    ],
)
def test_the_output_format_follows_the_url_path_extension(url: str, fmt: str | None) -> None:
    assert format_for_url(url) == fmt
