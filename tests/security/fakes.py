"""Stand-ins for DNS and for the outside world, so SSRF tests never send a packet beyond loopback.

`ScriptedResolver` answers what a test says (a rebinding DNS server answers differently each time);
`LoopbackNetwork` is the socket layer under `GuardedBackend`: it records every address it is asked
to connect to, connects loopback addresses for real and routes a public one to a loopback server
standing in for it, so "a public address is accepted" is tested without any public traffic.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import httpcore

LOOPBACK = frozenset({"127.0.0.1", "::1", "::ffff:127.0.0.1"})
PUBLIC = "93.184.215.14"  # a global address; never connected to, routed to a loopback server instead


class ScriptedResolver:
    """Answers for names: a list of answers per name, used in turn (the last one repeats)."""

    def __init__(self, answers: dict[str, Sequence[Sequence[str]]]) -> None:
        self.answers = answers
        self.calls: list[str] = []

    async def __call__(self, host: str, port: int) -> list[str]:
        self.calls.append(host)
        turns = self.answers[host]
        asked = sum(1 for call in self.calls if call == host)
        return list(turns[min(asked, len(turns)) - 1])


class LoopbackNetwork(httpcore.AsyncNetworkBackend):
    """Connects loopback addresses, routes others to `public_stand_in` (host, port), records them all."""

    def __init__(self, public_stand_in: tuple[str, int] | None = None) -> None:
        self.connected: list[str] = []
        self.public_stand_in = public_stand_in
        self._real = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[object] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        self.connected.append(host)
        if host not in LOOPBACK:
            assert self.public_stand_in is not None, f"the code under test tried to connect to {host}"
            host, port = self.public_stand_in
        return await self._real.connect_tcp(host, port, timeout, local_address)

    async def sleep(self, seconds: float) -> None:
        await self._real.sleep(seconds)
