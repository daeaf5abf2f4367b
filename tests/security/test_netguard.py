"""The address policy as pure logic: which addresses are refused and why, host notations, the allowlist."""

from __future__ import annotations

import socket
import sys
from ipaddress import ip_address

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.egress.netguard import (
    AddressPolicy,
    AddressRefusedError,
    address_rule,
    ascii_host,
    inet_aton,
    is_loopback_name,
    literal_address,
)
from shared.runtime.errors import InputError

STRICT = AddressPolicy()


@pytest.mark.parametrize(
    ("address", "rule"),
    [
        ("127.0.0.1", "a loopback address"),
        ("127.255.0.9", "a loopback address"),
        ("10.1.2.3", "a private address"),
        ("172.16.0.1", "a private address"),
        ("172.31.255.255", "a private address"),
        ("192.168.0.1", "a private address"),
        ("169.254.169.254", "a link-local address (cloud metadata)"),
        ("169.254.1.1", "a link-local address"),
        ("100.64.0.1", "a carrier-grade NAT address"),
        ("100.100.100.200", "a carrier-grade NAT address (cloud metadata)"),
        ("0.0.0.0", "an unspecified address"),
        ("0.1.2.3", "a 'this network' address"),
        ("224.0.0.1", "a multicast address"),
        ("239.255.255.250", "a multicast address"),
        ("240.0.0.1", "a reserved address"),
        ("255.255.255.255", "a broadcast address"),
        ("192.0.2.1", "a documentation address"),
        ("198.18.0.1", "a benchmarking address"),
        ("::1", "a loopback address"),
        ("::", "an unspecified address"),
        ("fe80::1", "a link-local address"),
        ("fe80::1%eth0", "a link-local address"),
        ("fc00::1", "a unique-local address"),
        ("fd12:3456::1", "a unique-local address"),
        ("fd00:ec2::254", "a unique-local address (cloud metadata)"),
        ("fec0::1", "a site-local address (deprecated)"),
        ("ff02::1", "a multicast address"),
        ("2001:db8::1", "a documentation address"),
        ("::ffff:127.0.0.1", "an IPv4-mapped address of 127.0.0.1, a loopback address"),
        ("::ffff:10.0.0.1", "an IPv4-mapped address of 10.0.0.1, a private address"),
        ("::ffff:169.254.169.254", "an IPv4-mapped address of 169.254.169.254, a link-local address (cloud metadata)"),
        ("::127.0.0.1", "an IPv4-compatible address (deprecated)"),
        ("2002:7f00:1::1", "a 6to4 address of 127.0.0.1, a loopback address"),
        ("2002:a9fe:a9fe::", "a 6to4 address of 169.254.169.254, a link-local address (cloud metadata)"),
        ("64:ff9b::7f00:1", "a NAT64 address of 127.0.0.1, a loopback address"),
        ("64:ff9b::a00:1", "a NAT64 address of 10.0.0.1, a private address"),
        ("64:ff9b:1::1", "a local-use NAT64 address"),
        ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "a Teredo tunnel address"),
        ("::ffff:0:127.0.0.1", "an IPv4-translated address of 127.0.0.1, a loopback address"),
        ("::ffff:0:a9fe:a9fe", "an IPv4-translated address of 169.254.169.254, a link-local address (cloud metadata)"),
        ("::5efe:127.0.0.1", "an ISATAP address of 127.0.0.1, a loopback address"),
        ("::200:5efe:10.0.0.1", "an ISATAP address of 10.0.0.1, a private address"),
        (
            "2606:4700::200:5efe:169.254.169.254",
            "an ISATAP address of 169.254.169.254, a link-local address (cloud metadata)",
        ),
        ("fe80::5efe:127.0.0.1", "an ISATAP address of 127.0.0.1, a loopback address"),
        ("2002:808:808::5efe:127.0.0.1", "an ISATAP address of 127.0.0.1, a loopback address"),  # 6to4 of a public one
        ("fe80::5efe:8.8.8.8", "a link-local address"),  # a public IPv4 address leaves the prefix to decide
        # Public: nothing to refuse (the IPv6 forms of a public IPv4 address reach just that address).
        ("93.184.215.14", None),
        ("8.8.8.8", None),
        ("2606:4700:4700::1111", None),
        ("::ffff:8.8.8.8", None),
        ("64:ff9b::808:808", None),
        ("2002:808:808::1", None),
        ("::ffff:0:8.8.8.8", None),
        ("2606:4700::5efe:8.8.8.8", None),
        ("2606:4700::100:5efe:127.0.0.1", None),  # not an ISATAP id (the group bit): just an address
    ],
)
def test_address_rules(address: str, rule: str | None) -> None:
    assert address_rule(ip_address(address)) == rule
    assert STRICT.refusal(ip_address(address)) == rule
    assert AddressPolicy(allow_private=True).refusal(ip_address(address)) is None


@pytest.mark.parametrize(
    ("host", "address"),
    [
        ("2130706433", "127.0.0.1"),  # decimal
        ("0177.0.0.1", "127.0.0.1"),  # octal
        ("0x7f.0.0.1", "127.0.0.1"),  # hex
        ("0x7F000001", "127.0.0.1"),
        ("127.1", "127.0.0.1"),  # short: the last part fills the remaining bytes
        ("127.0.1", "127.0.0.1"),
        ("0", "0.0.0.0"),
        ("169.254.43518", "169.254.169.254"),
        ("[::1]", "::1"),
        ("::ffff:127.0.0.1", "::ffff:127.0.0.1"),
        ("fe80::1%25eth0", "fe80::1%eth0"),  # the zone as a URL carries it
        ("127\u30020\u30020\u30021", "127.0.0.1"),  # ideographic full stops, as httpx maps them (IDNA)
        ("127\uff0e0\uff0e0\uff0e1", "127.0.0.1"),  # fullwidth full stops
        ("127\uff610\uff610\uff611", "127.0.0.1"),  # halfwidth ideographic full stops
        ("\uff11\uff12\uff17.0.0.\uff11", "127.0.0.1"),  # fullwidth digits (UTS-46 maps them)
        ("\uff10x7f\u30021", "127.0.0.1"),
        ("127%E3%80%820.0.1", "127.0.0.1"),  # percent-encoded, as a resolver-bound name would be decoded
        ("b\u00fccher.example", None),
        ("\u2603.example", None),  # no valid IDNA name: no address either
        ("example.com", None),
        ("1.2.3.4.5", None),
        ("256.1", None),
        ("08.1", None),  # not octal: a name to resolve (and refused by the resolver)
        ("0x", None),
    ],
)
def test_literal_address_reads_every_notation(host: str, address: str | None) -> None:
    assert literal_address(host) == (ip_address(address) if address else None)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="compares with glibc's inet_aton")
@settings(max_examples=500, derandomize=True, database=None)
@given(st.text(alphabet="0123456789abcdefxX.", min_size=1, max_size=16))
def test_inet_aton_reads_numbers_as_the_c_library_does(host: str) -> None:
    try:
        expected = socket.inet_aton(host)
    except OSError:
        expected = None
    ours = inet_aton(host)
    if expected is None and ours is not None:
        assert host.endswith(".")  # "127.0.0.1." is also refused here, though glibc calls it a name
    else:
        assert (ours.packed if ours else None) == expected


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://127.0.0.1/x.png", "input URL host 127.0.0.1 is a loopback address, refused"),
        ("http://localhost:8080/x.png", "input URL host localhost is a loopback name, refused"),
        ("http://api.localhost/x.png", "input URL host api.localhost is a loopback name, refused"),
        ("http://2130706433/x.png", "input URL host 2130706433 is 127.0.0.1, a loopback address, refused"),
        ("http://0177.0.0.1/x.png", "input URL host 0177.0.0.1 is 127.0.0.1, a loopback address, refused"),
        ("http://0x7f.0.0.1/x.png", "input URL host 0x7f.0.0.1 is 127.0.0.1, a loopback address, refused"),
        ("http://127.1/x.png", "input URL host 127.1 is 127.0.0.1, a loopback address, refused"),
        ("http://[::1]:80/x.png", "input URL host ::1 is a loopback address, refused"),
        ("http://[::ffff:127.0.0.1]/", "host ::ffff:127.0.0.1 is an IPv4-mapped address of 127.0.0.1, a loopback"),
        ("http://[::ffff:0:127.0.0.1]/", "host ::ffff:0:127.0.0.1 is an IPv4-translated address of 127.0.0.1, a loop"),
        ("http://[::200:5efe:127.0.0.1]/", "host ::200:5efe:127.0.0.1 is an ISATAP address of 127.0.0.1, a loopback"),
        ("http://127\u30020\u30020\u30021/", "host 127\u30020\u30020\u30021 is 127.0.0.1, a loopback address, refused"),
        ("http://\uff11\uff12\uff17.0.0.1:8080/", "is 127.0.0.1, a loopback address, refused"),
        ("http://\uff4c\uff4f\uff43\uff41\uff4c\uff48\uff4f\uff53\uff54/", "is a loopback name, refused"),
        ("http://169\uff0e254\uff0e169\uff0e254/", "is 169.254.169.254, a link-local address (cloud metadata)"),
        ("http://\u2603.example/x.png", "invalid input URL host \u2603.example (not a valid international host name"),
        ("http://a\u200db.example/x.png", "invalid input URL host"),
        ("https://169.254.169.254/latest/meta-data/", "is a link-local address (cloud metadata), refused"),
        ("http://0.0.0.0:8000/", "input URL host 0.0.0.0 is an unspecified address, refused"),
        ("http://10.0.0.5/", "input URL host 10.0.0.5 is a private address, refused"),
        ("http://[fe80::1%25eth0]/", "is a link-local address, refused"),
        ("ftp://example.com/x.png", "input URL scheme 'ftp' is not allowed (http, https)"),
        ("gopher://example.com:70/_x", "input URL scheme 'gopher' is not allowed"),
        ("http:///x.png", "input URL has no host"),
        ("http://example.com:99999/", "invalid input URL"),
    ],
)
def test_check_url_refuses_with_a_readable_reason(url: str, message: str) -> None:
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        STRICT.check_url(url, "input")


def test_check_url_leaves_names_to_the_connect_time_check() -> None:
    STRICT.check_url("https://images.example.com/cat.png", "input")  # resolved and vetted on connect
    STRICT.check_url("http://93.184.215.14/cat.png", "output")
    STRICT.check_url("https://b\u00fccher.example/cat.png", "input")  # an international name: xn--bcher-kva
    STRICT.check_url("http://under_score.example/cat.png", "input")  # ASCII names go as they are, as in httpx


def test_international_names_compare_in_their_ascii_form() -> None:
    assert ascii_host("B\u00fccher.Example") == "xn--bcher-kva.example"
    assert ascii_host("127\u30020\u30020\u30021") == "127.0.0.1"
    assert ascii_host("Under_Score.example") == "Under_Score.example"  # ASCII: untouched, like httpx
    with pytest.raises(ValueError, match="not a valid international host name"):
        ascii_host("\u2603.example")
    assert is_loopback_name("\uff4c\uff4f\uff43\uff41\uff4c\uff48\uff4f\uff53\uff54.")
    policy = AddressPolicy.build(allowlist=["b\u00fccher.internal"])
    assert policy.trusts("xn--bcher-kva.internal", 80)  # what the connect-time check gets from httpx
    assert policy.trusts("B\u00dcCHER.internal", 80)


def test_allowlist_entries_open_hosts_addresses_and_networks() -> None:
    policy = AddressPolicy.build(allowlist=["minio.internal", "10.20.0.0/16", "127.0.0.1", "[fd00::1]"])
    assert policy.hosts == frozenset({"minio.internal"})
    assert policy.trusts("MINIO.internal.", 9000)  # names compare without case or the root dot
    assert not policy.trusts("other.internal", 9000)
    assert policy.refusal(ip_address("10.20.3.4")) is None
    assert policy.refusal(ip_address("10.21.0.1")) == "a private address"
    assert policy.refusal(ip_address("127.0.0.1")) is None
    assert policy.refusal(ip_address("::ffff:127.0.0.1")) is None  # the same address, IPv6-mapped
    assert policy.refusal(ip_address("127.0.0.2")) == "a loopback address"
    assert policy.refusal(ip_address("fd00::1")) is None
    policy.check_url("http://127.0.0.1:1234/x.png", "input")
    policy.check_url("http://localhost/x.png", "input")  # 127.0.0.1 is allowed, so its name is too
    with pytest.raises(AddressRefusedError, match="169.254.169.254"):
        policy.check_url("http://169.254.169.254/", "input")


def test_the_s3_endpoint_is_trusted_on_its_port_only() -> None:
    policy = AddressPolicy.build(s3_endpoint="http://127.0.0.1:8333")
    assert policy.trusted == frozenset({("127.0.0.1", 8333)})
    policy.check_url("http://127.0.0.1:8333/bucket/key.png?X-Amz-Signature=abc", "output")
    with pytest.raises(AddressRefusedError, match="loopback"):
        policy.check_url("http://127.0.0.1:8334/bucket/key.png", "output")
    assert AddressPolicy.build(s3_endpoint="https://minio.example").trusts("minio.example", 443)


def test_from_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    from shared.config import Settings

    monkeypatch.setenv("TM_FETCH_ALLOWLIST", " cache.internal , 192.168.7.0/24 ,")
    policy = AddressPolicy.from_settings(Settings(), s3_endpoint="http://s3.internal:9000")
    assert not policy.allow_private
    assert policy.hosts == frozenset({"cache.internal"})
    assert policy.refusal(ip_address("192.168.7.7")) is None
    assert policy.trusts("s3.internal", 9000)
    monkeypatch.setenv("TM_FETCH_ALLOW_PRIVATE_NETWORKS", "true")
    assert AddressPolicy.from_settings(Settings()).refusal(ip_address("127.0.0.1")) is None


@settings(max_examples=300, derandomize=True, database=None)
@given(
    st.text(alphabet="0123456789abcdefx.:[]%-lochstLOCALHOST\u3002\uff0e\uff61\uff10\uff11\uff17\uff4c", max_size=24)
)
def test_check_url_on_any_host_refuses_or_lets_only_public_literals_through(host: str) -> None:
    try:
        STRICT.check_url(f"http://{host}/x.png", "input")
    except InputError:
        return  # a refusal (or an unreadable URL) is always a readable InputError, never anything else
    address = literal_address(host)
    assert address is None or address_rule(address) is None
