"""Which network addresses the fetcher and the uploader may reach on a user's behalf (SSRF defence).

By default only public unicast addresses: never loopback, private, link-local (cloud metadata at
169.254.169.254 included), carrier-grade NAT, multicast, reserved or unspecified ones, nor IPv6
forms that lead to them (IPv4-mapped, IPv4-translated, 6to4, NAT64 and ISATAP embeddings of such an
IPv4 address, unique-local, link-local). `AddressPolicy` holds the rules and the operator's
exceptions (TM_FETCH_ALLOWLIST hosts and CIDRs, TM_FETCH_ALLOW_PRIVATE_NETWORKS, the configured S3
endpoint). Two checks use it: `check_url` before a request (literal hosts, in every notation a
resolver accepts, non-ASCII ones mapped by IDNA/UTS-46 as httpx maps them: "127。0。0。1" is
127.0.0.1) and `shared.egress.transport`'s connect-time check of each address actually connected to.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network
from urllib.parse import unquote, urlsplit

import idna

from shared.config import Settings
from shared.egress.failures import safe_url
from shared.runtime.errors import InputError

IPAddress = IPv4Address | IPv6Address
IPNetwork = IPv4Network | IPv6Network

_V4_RULES: tuple[tuple[IPv4Network, str], ...] = tuple(
    (IPv4Network(cidr), rule)
    for cidr, rule in (
        ("0.0.0.0/32", "an unspecified address"),
        ("0.0.0.0/8", "a 'this network' address"),  # Linux connects 0.x.y.z to the local host
        ("10.0.0.0/8", "a private address"),
        ("100.100.100.200/32", "a carrier-grade NAT address (cloud metadata)"),
        ("100.64.0.0/10", "a carrier-grade NAT address"),
        ("127.0.0.0/8", "a loopback address"),
        ("168.63.129.16/32", "a cloud host address (Azure WireServer)"),  # public space, reachable in Azure only
        ("169.254.169.254/32", "a link-local address (cloud metadata)"),
        ("169.254.0.0/16", "a link-local address"),
        ("172.16.0.0/12", "a private address"),
        ("192.0.0.0/24", "an IETF protocol address"),
        ("192.0.2.0/24", "a documentation address"),
        ("192.88.99.0/24", "a 6to4 relay address"),
        ("192.168.0.0/16", "a private address"),
        ("198.18.0.0/15", "a benchmarking address"),
        ("198.51.100.0/24", "a documentation address"),
        ("203.0.113.0/24", "a documentation address"),
        ("224.0.0.0/4", "a multicast address"),
        ("255.255.255.255/32", "a broadcast address"),
        ("240.0.0.0/4", "a reserved address"),
    )
)
_V6_RULES: tuple[tuple[IPv6Network, str], ...] = tuple(
    (IPv6Network(cidr), rule)
    for cidr, rule in (
        ("::/128", "an unspecified address"),
        ("::1/128", "a loopback address"),
        ("::/96", "an IPv4-compatible address (deprecated)"),
        ("64:ff9b:1::/48", "a local-use NAT64 address"),
        ("100::/64", "a discard-only address"),
        ("2001::/32", "a Teredo tunnel address"),
        ("2001:db8::/32", "a documentation address"),
        ("fd00:ec2::254/128", "a unique-local address (cloud metadata)"),
        ("fc00::/7", "a unique-local address"),
        ("fe80::/10", "a link-local address"),
        ("fec0::/10", "a site-local address (deprecated)"),
        ("ff00::/8", "a multicast address"),
    )
)
_NAT64 = IPv6Network("64:ff9b::/96")
_TRANSLATED = IPv6Network("::ffff:0:0:0/96")  # RFC 2765 (SIIT): ::ffff:0:a.b.c.d
# ISATAP (RFC 5214): an interface id of 0000:5efe:a.b.c.d or 0200:5efe:a.b.c.d under any /64 prefix.
_ISATAP_MASK, _ISATAP_ID = 0xFDFFFFFF, 0x00005EFE
_LOOPBACK = IPv4Address("127.0.0.1")
_DEFAULT_PORTS = {"http": 80, "https": 443}
_INET_ATON_PART = re.compile(r"0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*")


def embedded_ipv4(address: IPv6Address) -> tuple[IPv4Address, str] | None:
    """The IPv4 address an IPv6 address stands for (mapped, translated, 6to4, NAT64), and that form's name.

    In these forms the prefix itself says "this IPv4 address", so the IPv4 address decides alone.
    """
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped, "an IPv4-mapped address"
    if address in _TRANSLATED:
        return IPv4Address(int(address) & 0xFFFFFFFF), "an IPv4-translated address"
    if address.sixtofour is not None:
        return address.sixtofour, "a 6to4 address"
    if address in _NAT64:
        return IPv4Address(int(address) & 0xFFFFFFFF), "a NAT64 address"
    return None


def isatap_ipv4(address: IPv6Address) -> IPv4Address | None:
    """The IPv4 address in an ISATAP interface id, whatever the prefix (which is still checked on its own)."""
    if (int(address) >> 32) & _ISATAP_MASK == _ISATAP_ID:
        return IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def address_rule(address: IPAddress) -> str | None:
    """Why `address` must not be reached on a user's behalf ("a loopback address" ...), None if public."""
    if isinstance(address, IPv6Address):
        address = ip_address(str(address).partition("%")[0])  # a zone ("fe80::1%eth0") changes nothing
        assert isinstance(address, IPv6Address)
        embedded = embedded_ipv4(address)
        if embedded and (rule := address_rule(embedded[0])):
            return f"{embedded[1]} of {embedded[0]}, {rule}"
        # Before a public embedding lets the address through: "2002:808:808::5efe:127.0.0.1" is both.
        if (isatap := isatap_ipv4(address)) and (rule := address_rule(isatap)):
            return f"an ISATAP address of {isatap}, {rule}"
        if embedded:
            return None  # the IPv6 form of a public IPv4 address reaches just that address
        rules: tuple[tuple[IPNetwork, str], ...] = _V6_RULES
    else:
        rules = _V4_RULES
    for network, rule in rules:
        if address in network:
            return rule
    return None if address.is_global else "a non-public address"


def inet_aton(host: str) -> IPv4Address | None:
    """`host` read as the C resolver reads IPv4 numbers: "2130706433", "0177.0.0.1", "0x7f.1", "127.1"."""
    parts = host.removesuffix(".").split(".")
    if not 1 <= len(parts) <= 4 or not all(_INET_ATON_PART.fullmatch(part) for part in parts):
        return None
    values = [int(p, 16) if p[:2].lower() == "0x" else int(p, 8) if p.startswith("0") else int(p) for p in parts]
    *head, last = values
    if any(value > 255 for value in head) or last >= 256 ** (4 - len(head)):
        return None
    return IPv4Address(sum(value << (8 * (3 - i)) for i, value in enumerate(head)) + last)


def ascii_host(host: str) -> str:
    """`host` as httpx and the resolver get it: ASCII as it is, anything else mapped by IDNA/UTS-46.

    "127。0。0。1" (ideographic full stops) and fullwidth "１２７.0.0.1" are 127.0.0.1, "ｌｏｃａｌｈｏｓｔ"
    is localhost, "bücher.de" is xn--bcher-kva.de; ValueError when `host` is no valid IDNA name.
    """
    if host.isascii():
        return host
    try:
        return idna.encode(host, uts46=True).decode("ascii")
    except UnicodeError as exc:  # idna.IDNAError and its kinds
        raise ValueError(f"not a valid international host name: {exc}") from exc


def literal_address(host: str) -> IPAddress | None:
    """The address a URL host names without DNS (IPv6, dotted IPv4 or a legacy IPv4 form), else None."""
    try:
        host = ascii_host(unquote(host).strip("[]"))
    except ValueError:
        return None
    try:
        return ip_address(host)
    except ValueError:
        return inet_aton(host)


def is_loopback_name(host: str) -> bool:
    """localhost and *.localhost always mean this machine (RFC 6761), whatever DNS says."""
    name = _name(host)
    return name == "localhost" or name.endswith(".localhost")


class AddressRefusedError(InputError):
    """A URL whose host is, or resolves to, an address the policy refuses."""

    def __init__(self, role: str, host: str, address: IPAddress | None, rule: str) -> None:
        if address is None:
            where = f"is {rule}"
        elif literal_address(host) == address:
            where = f"is {rule}" if _is_standard_literal(host) else f"is {address}, {rule}"  # 0177.1 is 127.0.0.1
        else:
            where = f"resolves to {address}, {rule}"
        super().__init__(f"{role} URL host {host} {where}, refused")
        self.host, self.address, self.rule = host, address, rule


@dataclass(frozen=True)
class AddressPolicy:
    """Where requests made for a task may go; see the module docstring."""

    allow_private: bool = False
    hosts: frozenset[str] = frozenset()  # allowlisted names: any address they resolve to is fine
    networks: tuple[IPNetwork, ...] = ()  # allowlisted networks
    trusted: frozenset[tuple[str, int]] = frozenset()  # (host, port) the operator set up: the S3 endpoint

    @classmethod
    def from_settings(cls, settings: Settings, *, s3_endpoint: str | None = None) -> AddressPolicy:
        """The policy of TM_FETCH_ALLOW_PRIVATE_NETWORKS and TM_FETCH_ALLOWLIST, trusting the S3 endpoint."""
        return cls.build(settings.fetch_allow_private_networks, settings.allowlist(), s3_endpoint)

    @classmethod
    def build(
        cls, allow_private: bool = False, allowlist: list[str] | None = None, s3_endpoint: str | None = None
    ) -> AddressPolicy:
        """A policy from allowlist entries (host names, addresses, CIDRs) and the S3 endpoint URL."""
        hosts: set[str] = set()
        networks: list[IPNetwork] = []
        for entry in allowlist or []:
            try:
                networks.append(ip_network(entry.strip("[]"), strict=False))
            except ValueError:
                hosts.add(_name(entry))
        trusted: set[tuple[str, int]] = set()
        try:
            if s3_endpoint and (endpoint := urlsplit(s3_endpoint)).hostname:
                port = endpoint.port or _DEFAULT_PORTS.get(endpoint.scheme.lower(), 80)
                trusted.add((_name(endpoint.hostname), port))
        except ValueError:
            pass  # an endpoint no client could use either: nothing to trust
        return cls(allow_private, frozenset(hosts), tuple(networks), frozenset(trusted))

    def trusts(self, host: str, port: int) -> bool:
        """Whether any address `host` leads to is fine: private networks allowed, allowlisted or configured."""
        name = _name(host)
        return self.allow_private or name in self.hosts or (name, port) in self.trusted

    def refusal(self, address: IPAddress) -> str | None:
        """Why connecting to `address` is refused, or None when it is allowed."""
        if self.allow_private:
            return None
        plain = ip_address(str(address).partition("%")[0])
        candidates = [plain]
        if isinstance(plain, IPv6Address) and (embedded := embedded_ipv4(plain)):
            candidates.append(embedded[0])
        if any(candidate in network for candidate in candidates for network in self.networks):
            return None
        return address_rule(plain)

    def check_url(self, url: str, role: str) -> None:
        """InputError unless `url` is http(s) with a host this policy lets requests go to (before DNS).

        Names are checked where they are connected to (`shared.egress.transport`); this catches what needs no
        DNS, in every notation a resolver accepts, and gives those refusals a clear message.
        """
        try:
            parts = urlsplit(url)
        except ValueError as exc:  # e.g. "http://[::1/": an unclosed IPv6 bracket
            raise InputError(f"invalid {role} URL ({exc}): {safe_url(url)}") from exc
        scheme = parts.scheme.lower()
        if scheme not in _DEFAULT_PORTS:
            raise InputError(f"{role} URL scheme {scheme or '(none)'!r} is not allowed (http, https): {safe_url(url)}")
        try:
            host, port = parts.hostname, parts.port or _DEFAULT_PORTS[scheme]
        except ValueError as exc:
            raise InputError(f"invalid {role} URL ({exc}): {safe_url(url)}") from exc
        if not host:
            raise InputError(f"{role} URL has no host: {safe_url(url)}")
        try:
            ascii_host(unquote(host))  # what httpx would send: the checks below read the host the same way
        except ValueError as exc:
            raise InputError(f"invalid {role} URL host {host} ({exc}): {safe_url(url)}") from exc
        if self.trusts(host, port):
            return
        if is_loopback_name(host) and self.refusal(_LOOPBACK):
            raise AddressRefusedError(role, host, None, "a loopback name")
        address = literal_address(host)
        if address is not None and (rule := self.refusal(address)):
            raise AddressRefusedError(role, host, address, rule)


def _name(host: str) -> str:
    name = host.strip().strip("[]")
    try:
        name = ascii_host(name)
    except ValueError:
        pass  # no IDNA name: compared as it is (check_url refuses it as a URL host)
    return name.lower().removesuffix(".")


def _is_standard_literal(host: str) -> bool:
    try:
        ip_address(unquote(host).strip("[]"))
    except ValueError:
        return False
    return True
