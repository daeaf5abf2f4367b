"""SSRF: inputs and PUT outputs may not reach this machine, its network or the cloud metadata service.

Real HTTP servers on loopback are the would-be victims (with private networks not allowed, 127.0.0.1
is exactly what must be refused); DNS and any public address come from tests/security/fakes.py.
"""

from __future__ import annotations

import re
import shutil
import ssl
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from botocore.config import Config

from services.fetcher.sources import read_input
from services.uploader.s3 import write_output
from shared.egress.netguard import AddressPolicy, AddressRefusedError
from shared.egress.transport import Resolver, guarded_client
from shared.runtime.errors import InputError, RetryableError
from tests.security.fakes import PUBLIC, LoopbackNetwork, ScriptedResolver
from tests.security.servers import HostileHTTPServer
from tests.servers import S3Server, StaticHTTPServer

STRICT = AddressPolicy()
LOCAL = AddressPolicy.build(allowlist=["127.0.0.1"])  # the test servers' address, and nothing else


@pytest.fixture
def served(http_server: StaticHTTPServer) -> str:
    name = f"{uuid.uuid4().hex}.bin"
    http_server.add(name, b"payload")
    return name


@pytest.fixture
def hostile() -> Iterator[HostileHTTPServer]:
    with HostileHTTPServer() as server:
        yield server


async def read(
    url: str,
    *,
    policy: AddressPolicy = STRICT,
    resolver: Resolver | None = None,
    network: LoopbackNetwork | None = None,
    verify: ssl.SSLContext | bool = True,
    **kwargs: Any,
) -> bytes:
    client = guarded_client(
        policy, role="input", timeout=httpx.Timeout(5), resolver=resolver, network=network, verify=verify
    )
    async with client as http:
        return await read_input(url, http=http, policy=policy, max_bytes=1024, **kwargs)


def literal(message: str) -> str:
    return re.escape(message)


@pytest.mark.parametrize(
    ("host", "reason"),
    [
        ("127.0.0.1", "host 127.0.0.1 is a loopback address"),
        ("localhost", "host localhost is a loopback name"),
        ("localhost.", "host localhost. is a loopback name"),
        ("2130706433", "host 2130706433 is 127.0.0.1, a loopback address"),  # decimal
        ("0177.0.0.1", "host 0177.0.0.1 is 127.0.0.1, a loopback address"),  # octal
        ("0x7f.0.0.1", "host 0x7f.0.0.1 is 127.0.0.1, a loopback address"),  # hex
        ("127.1", "host 127.1 is 127.0.0.1, a loopback address"),  # short form
        ("[::1]", "host ::1 is a loopback address"),
        ("[::ffff:127.0.0.1]", "host ::ffff:127.0.0.1 is an IPv4-mapped address of 127.0.0.1, a loopback address"),
        ("[64:ff9b::7f00:1]", "host 64:ff9b::7f00:1 is a NAT64 address of 127.0.0.1, a loopback address"),
        ("[::ffff:0:7f00:1]", "host ::ffff:0:7f00:1 is an IPv4-translated address of 127.0.0.1, a loopback address"),
        ("[::200:5efe:7f00:1]", "host ::200:5efe:7f00:1 is an ISATAP address of 127.0.0.1, a loopback address"),
        ("127\u30020\u30020\u30021", "host 127\u30020\u30020\u30021 is 127.0.0.1, a loopback address"),
        ("\uff11\uff12\uff17.0.0.1", "host \uff11\uff12\uff17.0.0.1 is 127.0.0.1, a loopback address"),
        (
            "\uff4c\uff4f\uff43\uff41\uff4c\uff48\uff4f\uff53\uff54",
            "host \uff4c\uff4f\uff43\uff41\uff4c\uff48\uff4f\uff53\uff54 is a loopback name",
        ),
        ("0.0.0.0", "host 0.0.0.0 is an unspecified address"),
        ("10.0.0.1", "host 10.0.0.1 is a private address"),
        ("172.16.0.1", "host 172.16.0.1 is a private address"),
        ("192.168.1.1", "host 192.168.1.1 is a private address"),
        ("100.64.0.1", "host 100.64.0.1 is a carrier-grade NAT address"),
        ("169.254.169.254", "host 169.254.169.254 is a link-local address (cloud metadata)"),
        ("[fd00:ec2::254]", "host fd00:ec2::254 is a unique-local address (cloud metadata)"),
        ("[fe80::1%25lo]", "host fe80::1%25lo is a link-local address"),
    ],
)
async def test_private_hosts_are_refused_before_any_connection(
    http_server: StaticHTTPServer, served: str, host: str, reason: str
) -> None:
    network, before = LoopbackNetwork(), len(http_server.requests)
    with pytest.raises(AddressRefusedError, match=literal(f"input URL {reason}, refused")):
        await read(f"http://{host}:{http_server.port}/{served}", network=network)
    assert network.connected == []
    assert len(http_server.requests) == before


@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1",
        "2130706433",
        "[::1]",
        "[::ffff:127.0.0.1]",
        "0.0.0.0",
        "[::ffff:0:127.0.0.1]",
        "[::5efe:127.0.0.1]",
        "127\u30020\u30020\u30021",  # httpx maps it to 127.0.0.1 before the backend sees it
        "127\uff0e0\uff0e0\uff0e1",
    ],
)
async def test_the_connection_itself_is_checked_too(http_server: StaticHTTPServer, served: str, host: str) -> None:
    # Straight to the client, past read_input's URL check: the transport refuses on its own.
    network = LoopbackNetwork()
    async with guarded_client(STRICT, role="input", timeout=httpx.Timeout(5), network=network) as http:
        with pytest.raises(AddressRefusedError, match="loopback|unspecified"):
            await http.get(f"http://{host}:{http_server.port}/{served}")
    assert network.connected == []


async def test_international_names_reach_the_connect_time_check_in_ascii(
    http_server: StaticHTTPServer, served: str
) -> None:
    # The checks before the request and at connect time read the same name: its IDNA (ASCII) form.
    resolver, network = ScriptedResolver({"xn--bcher-kva.test": [["127.0.0.1"]]}), LoopbackNetwork()
    message = "input URL host xn--bcher-kva.test resolves to 127.0.0.1, a loopback address, refused"
    with pytest.raises(AddressRefusedError, match=literal(message)):
        await read(f"http://b\u00fccher.test:{http_server.port}/{served}", resolver=resolver, network=network)
    assert resolver.calls == ["xn--bcher-kva.test"] and network.connected == []
    allowed = AddressPolicy.build(allowlist=["B\u00dcCHER.test"])  # the operator may write it either way
    url = f"http://b\u00fccher.test:{http_server.port}/{served}"
    assert await read(url, policy=allowed, resolver=resolver, network=network) == b"payload"
    assert network.connected == ["127.0.0.1"]


async def test_a_name_resolving_to_loopback_is_refused(http_server: StaticHTTPServer, served: str) -> None:
    resolver, network = ScriptedResolver({"innocent.test": [["127.0.0.1"]]}), LoopbackNetwork()
    message = "input URL host innocent.test resolves to 127.0.0.1, a loopback address, refused"
    with pytest.raises(AddressRefusedError, match=literal(message)):
        await read(f"http://innocent.test:{http_server.port}/{served}", resolver=resolver, network=network)
    assert network.connected == []


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        ([PUBLIC, "127.0.0.1"], "resolves to 127.0.0.1, a loopback address"),  # one bad answer is enough
        (["::ffff:169.254.169.254"], "an IPv4-mapped address of 169.254.169.254, a link-local address (cloud"),
        (["64:ff9b::a00:1"], "resolves to 64:ff9b::a00:1, a NAT64 address of 10.0.0.1, a private address"),
        (["fd12::1"], "resolves to fd12::1, a unique-local address"),
        (["fe80::1%lo"], "a link-local address"),
        (["::ffff:0:a9fe:a9fe"], "an IPv4-translated address of 169.254.169.254, a link-local address (cloud"),
        (["fe80::200:5efe:a00:1"], "resolves to fe80::200:5efe:a00:1, an ISATAP address of 10.0.0.1, a private"),
    ],
)
async def test_every_resolved_address_must_be_allowed(answer: list[str], reason: str) -> None:
    resolver, network = ScriptedResolver({"mixed.test": [answer]}), LoopbackNetwork()
    with pytest.raises(AddressRefusedError, match=literal(reason)):
        await read("http://mixed.test/x.png", resolver=resolver, network=network)
    assert network.connected == []


async def test_dns_rebinding_between_connections_is_refused(http_server: StaticHTTPServer, served: str) -> None:
    # The name answers a public address first (the stand-in server answers with a redirect to the same
    # host, and closes the connection: HTTP/1.0), then 127.0.0.1: the second connection must not happen.
    resolver = ScriptedResolver({"rebind.test": [[PUBLIC], ["127.0.0.1"]]})
    network = LoopbackNetwork(public_stand_in=("127.0.0.1", http_server.port))
    before = len(http_server.requests)
    with pytest.raises(AddressRefusedError, match=literal("host rebind.test resolves to 127.0.0.1, a loopback")):
        await read(f"http://rebind.test:{http_server.port}/redirect/1/{served}", resolver=resolver, network=network)
    assert resolver.calls == ["rebind.test", "rebind.test"]  # resolved once per connection, checked each time
    assert network.connected == [PUBLIC]  # never 127.0.0.1
    assert [r.path for r in http_server.requests[before:]] == [f"/redirect/1/{served}"]


async def test_a_public_address_is_accepted_and_is_what_is_connected_to(
    http_server: StaticHTTPServer, served: str
) -> None:
    resolver = ScriptedResolver({"images.test": [[PUBLIC]]})
    network = LoopbackNetwork(public_stand_in=("127.0.0.1", http_server.port))
    assert await read(f"http://images.test:{http_server.port}/{served}", resolver=resolver, network=network) == (
        b"payload"
    )
    assert network.connected == [PUBLIC]


@pytest.mark.parametrize(
    ("target", "reason"),
    [
        ("http://169.254.169.254/latest/meta-data/", "host 169.254.169.254 is a link-local address (cloud metadata)"),
        ("http://[::ffff:a9fe:a9fe]/latest/", "host ::ffff:a9fe:a9fe is an IPv4-mapped address of 169.254.169.254"),
        ("http://2852039166/latest/", "host 2852039166 is 169.254.169.254, a link-local address (cloud metadata)"),
        ("http://metadata.test/latest/", "host metadata.test resolves to 169.254.169.254, a link-local address"),
        ("http://127.0.0.2:8080/admin", "host 127.0.0.2 is a loopback address"),
    ],
)
async def test_a_redirect_from_an_allowed_server_to_metadata_is_refused(
    hostile: HostileHTTPServer, target: str, reason: str
) -> None:
    resolver = ScriptedResolver({"metadata.test": [["169.254.169.254"]]})
    network = LoopbackNetwork()
    with pytest.raises(AddressRefusedError, match=literal(f"input URL {reason}")):
        await read(hostile.redirect_to(target), policy=LOCAL, resolver=resolver, network=network)
    assert network.connected == ["127.0.0.1"]  # the allowed first hop only
    assert hostile.paths == ["/redirect"]


@pytest.mark.parametrize("target", ["file:///etc/passwd", "gopher://127.0.0.1:70/_x", "ftp://x.test/a", "s3://b/k"])
async def test_a_redirect_to_another_scheme_is_refused(hostile: HostileHTTPServer, target: str) -> None:
    with pytest.raises(InputError, match="redirected to a non-HTTP URL"):
        await read(hostile.redirect_to(target), policy=LOCAL)


async def test_redirects_are_counted(http_server: StaticHTTPServer, served: str) -> None:
    assert await read(http_server.url(f"redirect/3/{served}"), policy=LOCAL, max_redirects=3) == b"payload"
    with pytest.raises(InputError, match=literal("redirected more than 2 times (TM_FETCH_MAX_REDIRECTS)")):
        await read(http_server.url(f"redirect/3/{served}"), policy=LOCAL, max_redirects=2)
    with pytest.raises(InputError, match="redirected more than 0 times"):
        await read(http_server.url(f"redirect/1/{served}"), policy=LOCAL, max_redirects=0)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("ftp://files.test/x.png", "unsupported input URL scheme 'ftp'"),
        ("gopher://files.test:70/_x", "unsupported input URL scheme 'gopher'"),
        ("dict://files.test:11211/stat", "unsupported input URL scheme 'dict'"),
        ("file:///etc/passwd", "file:// input URLs are not allowed here (TM_FILE_ROOT is not set)"),
        ("http://[::1/x.png", "invalid input URL"),
        ("http://\u2603.test/x.png", "invalid input URL host \u2603.test"),
    ],
)
async def test_other_schemes_are_refused(url: str, message: str) -> None:
    with pytest.raises(InputError, match=literal(message)):
        await read(url, network=LoopbackNetwork())


@pytest.mark.parametrize(
    ("allowlist", "host"),
    [
        (["127.0.0.1"], "127.0.0.1"),
        (["127.0.0.0/8"], "127.0.0.1"),
        (["127.0.0.0/8"], "2130706433"),
        (["127.0.0.0/8"], "localhost"),
        (["files.internal"], "files.internal"),  # a name: whatever it resolves to
        (["10.0.0.0/8", "127.0.0.1/32"], "files.internal"),
    ],
)
async def test_allowlist_hits_are_accepted(
    http_server: StaticHTTPServer, served: str, allowlist: list[str], host: str
) -> None:
    policy = AddressPolicy.build(allowlist=allowlist)
    resolver = ScriptedResolver({"files.internal": [["127.0.0.1"]], "localhost": [["127.0.0.1"]]})
    network = LoopbackNetwork()
    url = f"http://{host}:{http_server.port}/{served}"
    assert await read(url, policy=policy, resolver=resolver, network=network) == b"payload"
    assert network.connected == ["127.0.0.1"]


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for the name tls.test (and no IP address), made with openssl."""
    if shutil.which("openssl") is None:
        pytest.skip(reason="openssl is not installed")
    directory = tmp_path_factory.mktemp("tls")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=tls.test",
         "-addext", "subjectAltName=DNS:tls.test", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=30,
    )  # fmt: skip
    return cert, key


async def test_tls_checks_the_certificate_against_the_name_not_the_vetted_address(
    tls_files: tuple[Path, Path],
) -> None:
    cert, key = tls_files
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert, key)
    client_context = ssl.create_default_context(cafile=str(cert))
    resolver = ScriptedResolver({"tls.test": [["127.0.0.1"]]})
    with HostileHTTPServer(tls=server_context) as server:
        server.add("x.bin", b"secure")
        url = f"https://tls.test:{server.port}/x.bin"
        assert await read(url, policy=LOCAL, resolver=resolver, verify=client_context) == b"secure"
        # The same server by its address: connected to, but its certificate does not name 127.0.0.1.
        with pytest.raises(RetryableError, match="CERTIFICATE_VERIFY_FAILED"):
            await read(server.url("x.bin"), policy=LOCAL, verify=client_context)


async def write(url: str, policy: AddressPolicy, *, endpoint: str | None = None, **client: Any) -> None:
    async with guarded_client(policy, role="output", timeout=httpx.Timeout(5), **client) as http:
        await write_output(url, b"img", "image/png", http=http, policy=policy, s3=None, s3_endpoint=endpoint)


async def test_put_outputs_are_held_to_the_same_rules(http_server: StaticHTTPServer) -> None:
    name = f"{uuid.uuid4().hex}.png"
    with pytest.raises(AddressRefusedError, match=literal("output URL host 127.0.0.1 is a loopback address")):
        await write(http_server.url(f"put/{name}"), STRICT)
    with pytest.raises(AddressRefusedError, match=literal("output URL host 2130706433 is 127.0.0.1")):
        await write(f"http://2130706433:{http_server.port}/put/{name}", STRICT)
    resolver, network = ScriptedResolver({"bucket.test": [["10.1.2.3"]]}), LoopbackNetwork()
    with pytest.raises(AddressRefusedError, match=literal("host bucket.test resolves to 10.1.2.3, a private")):
        await write(f"http://bucket.test/put/{name}", STRICT, resolver=resolver, network=network)
    assert network.connected == []
    assert name not in http_server.puts


async def test_the_configured_s3_endpoint_is_not_subject_to_the_rules(
    s3_env: S3Server, s3_bucket: str, http_server: StaticHTTPServer
) -> None:
    # SeaweedFS listens on 127.0.0.1, chosen by the operator (AWS_ENDPOINT_URL_S3): presigned PUTs to it
    # work with private networks refused; the same kind of URL on another loopback port does not.
    policy = AddressPolicy.build(s3_endpoint=s3_env.endpoint_url)
    signer = s3_env.client(Config(signature_version="s3v4"))
    signed = signer.generate_presigned_url("put_object", Params={"Bucket": s3_bucket, "Key": "p.png"})
    await write(signed, policy, endpoint=s3_env.endpoint_url)
    assert s3_env.client().get_object(Bucket=s3_bucket, Key="p.png")["Body"].read() == b"img"
    await write(f"s3://{s3_bucket}/q.png", STRICT)  # the S3 client, on the configured endpoint
    with pytest.raises(AddressRefusedError, match="loopback"):
        await write(http_server.url("put/p.png?X-Amz-Signature=abc"), policy, endpoint=s3_env.endpoint_url)
