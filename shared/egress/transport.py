"""An httpx client that vets the address of every connection it opens (no DNS-rebinding window).

A check of the URL's host before the request is not enough: the HTTP client resolves the name again
when it connects, and a hostile DNS server can answer a public address to the check and 127.0.0.1 to
the connection. So the check lives in httpcore's network backend, the one place that turns a host
into a socket: `GuardedBackend.connect_tcp` resolves the host once, refuses if any address it got is
not allowed by the `AddressPolicy`, and connects to the vetted address itself. TLS still verifies
the certificate against the host name (httpcore hands it to `start_tls` separately), and every
redirect hop is a new request, so it is checked again.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence

import anyio
import httpcore
import httpx

from shared.config import Settings
from shared.egress.failures import s3_endpoint
from shared.egress.netguard import AddressPolicy, AddressRefusedError, IPAddress, literal_address
from shared.runtime.errors import InputError

Resolver = Callable[[str, int], Awaitable[Sequence[str]]]
"""(host, port) -> the addresses to connect to, in order; the system resolver unless a test injects one."""

SocketOption = tuple[int, int, int] | tuple[int, int, bytes | bytearray] | tuple[int, int, None, int]


async def system_resolver(host: str, port: int) -> list[str]:
    """The host's addresses from getaddrinfo (the OS resolver: hosts file, DNS), without duplicates."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


class GuardedBackend(httpcore.AsyncNetworkBackend):
    """httpcore's default backend, except that it connects only to addresses `policy` allows.

    `role` ("input" or "output") names the URL in refusals: "input URL host ... is a loopback address".
    `resolver` turns names into addresses and `network` opens sockets to vetted ones (tests replace them).
    """

    def __init__(
        self,
        policy: AddressPolicy,
        *,
        role: str,
        resolver: Resolver | None = None,
        network: httpcore.AsyncNetworkBackend | None = None,
    ) -> None:
        self.policy = policy
        self.role = role
        self.resolver = resolver or system_resolver
        self._backend = network or httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[SocketOption] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            with anyio.fail_after(timeout):
                addresses = await self._resolve(host, port)
        except TimeoutError as exc:
            raise httpcore.ConnectTimeout(f"resolving {host} took longer than {timeout} s") from exc
        if not self.policy.trusts(host, port):
            for address in addresses:  # all of them: a rebinding answer may mix a public and a private one
                if rule := self.policy.refusal(address):
                    raise AddressRefusedError(self.role, host, address, rule)
        error: Exception = httpcore.ConnectError(f"no address to connect to for {host}")
        for address in addresses:  # like the OS's own connect loop: the first one that answers
            left = None if deadline is None else max(deadline - time.monotonic(), 0.0)
            try:
                return await self._backend.connect_tcp(str(address), port, left, local_address, socket_options)
            except httpcore.ConnectError as exc:
                error = exc
        raise error

    async def _resolve(self, host: str, port: int) -> list[IPAddress]:
        """The host's addresses, resolved once: the ones checked are the ones connected to."""
        literal = literal_address(host)  # legacy forms too ("2130706433"), read as the OS would read them
        if literal is not None:
            return [literal]
        try:
            answers = await self.resolver(host, port)
        except socket.gaierror as exc:
            unknown = {socket.EAI_NONAME, getattr(socket, "EAI_NODATA", socket.EAI_NONAME)}
            if exc.errno in unknown:
                raise InputError(f"{self.role} URL host {host} does not resolve ({exc.strerror})") from exc
            raise httpcore.ConnectError(f"cannot resolve host {host}: {exc.strerror}") from exc
        return [_parse(answer) for answer in answers]

    async def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[SocketOption] | None = None
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("unix sockets are not reachable through this client")

    async def sleep(self, seconds: float) -> None:
        await self._backend.sleep(seconds)


class GuardedTransport(httpx.AsyncHTTPTransport):
    """httpx's transport on a `GuardedBackend`, never through a proxy from the environment."""

    def __init__(
        self, backend: GuardedBackend, *, verify: ssl.SSLContext | bool = True, limits: httpx.Limits | None = None
    ) -> None:
        limits = limits or httpx.Limits()
        context = verify if isinstance(verify, ssl.SSLContext) else httpx.create_ssl_context(verify, trust_env=False)
        super().__init__(verify=context, trust_env=False, limits=limits)
        # httpx takes no network backend, so the pool it built is replaced by the same pool on ours.
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=context,
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=backend,
        )


def task_client(settings: Settings, role: str) -> tuple[AddressPolicy, httpx.AsyncClient]:
    """The address policy from the settings and a guarded client with the fetch timeouts, for a
    stage that reads (role "input") or writes ("output") the URLs of tasks."""
    policy = AddressPolicy.from_settings(settings, s3_endpoint=s3_endpoint())
    timeout = httpx.Timeout(settings.fetch_timeout_s, connect=settings.fetch_connect_timeout_s)
    return policy, guarded_client(policy, role=role, timeout=timeout)


def guarded_client(
    policy: AddressPolicy,
    *,
    role: str,
    timeout: httpx.Timeout,
    resolver: Resolver | None = None,
    network: httpcore.AsyncNetworkBackend | None = None,
    verify: ssl.SSLContext | bool = True,
) -> httpx.AsyncClient:
    """An httpx client for URLs users give: every connection vetted, no redirects followed by itself,
    bodies asked for uncompressed (read them with `shared.egress.bodies.read_body`, which bounds them decoded)."""
    backend = GuardedBackend(policy, role=role, resolver=resolver, network=network)
    transport = GuardedTransport(backend, verify=verify)
    # identity: an honest server then sends plain bytes, and a body's size is its Content-Length.
    headers = {"Accept-Encoding": "identity"}
    return httpx.AsyncClient(
        transport=transport, timeout=timeout, headers=headers, follow_redirects=False, trust_env=False
    )


def _parse(answer: str) -> IPAddress:
    address = literal_address(answer)
    if address is None:
        raise httpcore.ConnectError(f"the resolver answered {answer!r}, which is not an address")
    return address
