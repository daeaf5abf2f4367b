"""What an S3 failure means (shared/egress/failures.py), for the fetcher's reads and the uploader's writes.

Pure logic: botocore's exceptions are built here as botocore builds them. The same failures against a real
S3 server are in tests/uploader/test_s3_settings.py and tests/fetcher/test_sources.py.
"""

from __future__ import annotations

import aiohttp
import pytest
from botocore.exceptions import (
    ClientError,
    ConfigParseError,
    ConnectTimeoutError,
    CredentialRetrievalError,
    EndpointConnectionError,
    InvalidRegionError,
    NoCredentialsError,
    NoRegionError,
    ParamValidationError,
    PartialCredentialsError,
    ProfileNotFound,
    ReadTimeoutError,
)

from shared.egress.failures import S3_CREDENTIALS_ADVICE, S3_ERRORS, S3SettingsError, s3_endpoint_problem, s3_error
from shared.runtime.errors import ConfigurationError, InputError, RetryableError, TaskError

URL = "s3://photos/out/cat.png"


def answer(code: str, status: int, message: str = "") -> ClientError:
    error = {"Code": code} | ({"Message": message} if message else {})
    return ClientError({"Error": error, "ResponseMetadata": {"HTTPStatusCode": status}}, "PutObject")


def classify(exc: BaseException, role: str = "output") -> TaskError:
    assert isinstance(exc, S3_ERRORS)  # the callers catch only these: anything else would be "internal error"
    return s3_error(exc, role, URL, "photos")


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (answer("NoSuchKey", 404), InputError),
        (answer("NoSuchBucket", 404), InputError),
        (answer("InvalidObjectState", 403), InputError),  # a 403 that is the object's, not ours
        (ParamValidationError(report="Invalid bucket name"), InputError),
        (answer("SlowDown", 503), RetryableError),
        (answer("InternalError", 500), RetryableError),
        (answer("ServiceUnavailable", 503), RetryableError),
        (answer("Throttling", 400), RetryableError),
        (answer("Anything", 429), RetryableError),
        (EndpointConnectionError(endpoint_url="http://s3:8333/photos"), RetryableError),
        (ConnectTimeoutError(endpoint_url="http://s3:8333/photos"), RetryableError),
        (ReadTimeoutError(endpoint_url="http://s3:8333/photos"), RetryableError),
        (aiohttp.ClientConnectionError("refused"), RetryableError),
        (TimeoutError(), RetryableError),
        (CredentialRetrievalError(provider="container-role", error_msg="timed out"), RetryableError),
    ],
)
def test_the_objects_fault_is_input_and_the_networks_is_retried(exc: BaseException, kind: type) -> None:
    assert type(classify(exc)) is kind


def test_no_credentials_says_what_to_set() -> None:
    error = classify(NoCredentialsError())
    assert type(error) is ConfigurationError
    assert str(error) == (
        "output s3://photos/out/cat.png: S3 credentials are not configured: set AWS_ACCESS_KEY_ID and "
        "AWS_SECRET_ACCESS_KEY (or AWS_PROFILE), and AWS_ENDPOINT_URL_S3 for a non-AWS server"
    )
    partial = classify(PartialCredentialsError(provider="env", cred_var="AWS_SECRET_ACCESS_KEY"), role="input")
    assert type(partial) is ConfigurationError
    assert str(partial).startswith(f"input {URL}: {S3_CREDENTIALS_ADVICE}")
    assert str(partial).endswith("(Partial credentials found in env, missing: AWS_SECRET_ACCESS_KEY)")


@pytest.mark.parametrize(
    ("exc", "says"),
    [
        (NoRegionError(), "the S3 region is not usable (You must specify a region.): set AWS_DEFAULT_REGION"),
        (InvalidRegionError(region_name="not a region!"), "region_name 'not a region!'"),
        (ProfileNotFound(profile="nope"), "The config profile (nope) could not be found): check AWS_PROFILE"),
        (ConfigParseError(path="/etc/aws/config"), "Unable to parse config file: /etc/aws/config): check AWS_PROFILE"),
        (S3SettingsError("the S3 endpoint URL 'x' (AWS_ENDPOINT_URL_S3) is malformed"), "(AWS_ENDPOINT_URL_S3)"),
    ],
)
def test_settings_that_cannot_work_fail_at_once(exc: BaseException, says: str) -> None:
    error = classify(exc)
    assert type(error) is ConfigurationError
    assert str(error).startswith(f"output {URL}: ") and says in str(error)


@pytest.mark.parametrize(
    ("code", "check"),
    [
        ("InvalidAccessKeyId", "check AWS_ACCESS_KEY_ID, and that AWS_ENDPOINT_URL_S3 names the server"),
        ("SignatureDoesNotMatch", "check AWS_SECRET_ACCESS_KEY"),
        ("ExpiredToken", "renew AWS_SESSION_TOKEN"),
        ("InvalidToken", "check AWS_SESSION_TOKEN"),
        ("RequestTimeTooSkewed", "this host's clock"),
        ("AuthorizationHeaderMalformed", "check AWS_DEFAULT_REGION"),
    ],
)
def test_refused_keys_are_configuration_errors_that_say_what_to_check(code: str, check: str) -> None:
    error = classify(answer(code, 403 if code != "AuthorizationHeaderMalformed" else 400, "Server says no."))
    assert type(error) is ConfigurationError
    assert str(error).startswith(f"output {URL}: {code} (Server says no.): ")  # the bucket is in the URL
    assert check in str(error)


def test_access_denied_names_the_bucket_and_the_permission() -> None:
    written = classify(answer("AccessDenied", 403, "Access Denied."))
    assert type(written) is ConfigurationError
    assert str(written) == (
        f"output {URL}: AccessDenied (Access Denied.): the S3 credentials may not write to bucket 'photos': "
        "check that they are granted s3:PutObject on it"
    )
    read = classify(answer("AccessDenied", 403), role="input")
    assert type(read) is ConfigurationError
    assert "may not read from bucket 'photos': check that they are granted s3:GetObject" in str(read)
    assert "s3:ListBucket" in str(read)  # AWS's answer for a missing key the credentials may not list


@pytest.mark.parametrize(
    ("variable", "endpoint", "why"),
    [
        ("AWS_ENDPOINT_URL_S3", "localhost:8333", "it needs http:// or https:// and a host"),
        ("AWS_ENDPOINT_URL_S3", "seaweedfs", "it needs http:// or https:// and a host"),
        ("AWS_ENDPOINT_URL_S3", "ftp://seaweedfs:8333", "it needs http:// or https:// and a host"),
        ("AWS_ENDPOINT_URL_S3", "http://", "its host is not a valid host name or address"),
        ("AWS_ENDPOINT_URL_S3", "http://bad host:8333", "its host is not a valid host name or address"),
        ("AWS_ENDPOINT_URL_S3", "http://seaweedfs:99999", "Port out of range 0-65535"),
        ("AWS_ENDPOINT_URL_S3", "http://[::1", "Invalid IPv6 URL"),
        ("AWS_ENDPOINT_URL", "http://key:secret@seaweedfs:8333", "it carries a user name or password"),
    ],
)
def test_a_malformed_endpoint_is_named_with_its_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, endpoint: str, why: str
) -> None:
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.setenv(variable, endpoint)
    problem = s3_endpoint_problem()
    assert problem is not None and f"({variable}) is malformed: {why}" in problem
    assert problem.endswith("set it to the server's URL, such as http://seaweedfs:8333")
    assert "secret" not in problem  # the URL is shown without its password


@pytest.mark.parametrize(
    "endpoint", [None, "http://seaweedfs:8333", "https://s3.example.com", "http://127.0.0.1:8333/", "http://[::1]:8333"]
)
def test_a_usable_endpoint_has_no_problem(monkeypatch: pytest.MonkeyPatch, endpoint: str | None) -> None:
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    if endpoint is None:
        monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    else:
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", endpoint)
    assert s3_endpoint_problem() is None
