"""The bounded body reader: content codings undone layer by layer, never more than a chunk at a time,
and reading stopped as soon as the decoded total passes the limit (shared/egress/bodies.py)."""

from __future__ import annotations

import gzip
import os
import tracemalloc
import zlib
from collections.abc import Iterator

import httpx
import pytest

from shared.egress.bodies import CHUNK_BYTES, CodingError, Decoder, read_body
from shared.egress.netguard import AddressPolicy
from shared.egress.transport import guarded_client
from shared.runtime.errors import InputError
from tests.security.hostile import MiB, body_bomb
from tests.security.servers import HostileHTTPServer, Reply

DATA = os.urandom(3000) + bytes(200_000)  # some noise, then a long run that compresses well
OPEN = AddressPolicy(allow_private=True)  # the server is on loopback


def deflate(data: bytes, wbits: int) -> bytes:
    compressor = zlib.compressobj(6, zlib.DEFLATED, wbits)
    return compressor.compress(data) + compressor.flush()


def decode(content_encoding: str, body: bytes, piece_bytes: int = 1000) -> bytes:
    """`body` fed in small raw pieces, as a network would cut it."""
    decoder = Decoder(content_encoding)
    out = b"".join(
        piece for i in range(0, len(body), piece_bytes) for piece in decoder.decode(body[i : i + piece_bytes])
    )
    decoder.finish()
    return out


@pytest.mark.parametrize("content_encoding", ["", "identity", "Identity , "])
def test_identity_is_passed_through(content_encoding: str) -> None:
    assert decode(content_encoding, DATA) == DATA


@pytest.mark.parametrize("coding", ["gzip", "x-gzip", "GZIP"])
def test_gzip(coding: str) -> None:
    assert decode(coding, gzip.compress(DATA)) == DATA
    assert decode(coding, gzip.compress(DATA), piece_bytes=1) == DATA  # a byte at a time


def test_gzip_of_several_members() -> None:
    assert decode("gzip", gzip.compress(DATA[:100]) + gzip.compress(DATA[100:])) == DATA


@pytest.mark.parametrize("wbits", [zlib.MAX_WBITS, -zlib.MAX_WBITS], ids=["zlib", "raw"])
def test_deflate_in_both_forms(wbits: int) -> None:
    assert decode("deflate", deflate(DATA, wbits)) == DATA
    assert decode("deflate", deflate(DATA, wbits), piece_bytes=1) == DATA


def test_nested_codings_are_undone_last_first() -> None:
    body = gzip.compress(deflate(gzip.compress(DATA), -zlib.MAX_WBITS))  # gzip, then deflate, then gzip
    assert decode("gzip, deflate, gzip", body) == DATA
    assert decode("gzip,gzip", gzip.compress(gzip.compress(DATA))) == DATA


@pytest.mark.parametrize("coding", ["br", "zstd", "compress", "x-compress", "rot13", "gzip, br"])
def test_other_codings_are_refused(coding: str) -> None:
    with pytest.raises(CodingError, match="which is not read here \\(identity, gzip, deflate\\)"):
        Decoder(coding)


@pytest.mark.parametrize(
    ("coding", "body"),
    [("gzip", gzip.compress(DATA)[:-100]), ("gzip", gzip.compress(DATA)[:5]), ("deflate", b"\x78"),
     ("deflate", deflate(DATA, zlib.MAX_WBITS)[:-50]), ("gzip, gzip", gzip.compress(gzip.compress(DATA))[:-9])],
)  # fmt: skip
def test_a_truncated_stream_is_an_error(coding: str, body: bytes) -> None:
    with pytest.raises(CodingError, match="sent a truncated"):
        decode(coding, body)


def test_corrupt_streams_are_errors() -> None:
    with pytest.raises(CodingError, match=r"sent a corrupt gzip body \(.*incorrect header check"):
        decode("gzip", b"not gzip at all")
    with pytest.raises(CodingError, match="bytes after the end of its deflate stream"):
        decode("deflate", deflate(DATA, zlib.MAX_WBITS) + b"trailing")


def test_an_empty_body_is_empty_whatever_its_coding() -> None:
    assert decode("gzip, deflate", b"") == b""


def bomb_pieces(limit: int) -> Iterator[bytes]:
    """The 1 GiB behind the double-gzip bomb, until `limit` bytes have come out."""
    decoder, total, bomb = Decoder("gzip, gzip"), 0, body_bomb()
    for i in range(0, len(bomb), 512):
        for piece in decoder.decode(bomb[i : i + 512]):
            yield piece
            total += len(piece)
            if total >= limit:
                return


def test_a_bomb_comes_out_a_chunk_at_a_time() -> None:
    body_bomb()  # made (and cached) before the count starts
    tracemalloc.start()
    try:
        sizes = [len(piece) for piece in bomb_pieces(64 * MiB)]  # each piece dropped once counted
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert sum(sizes) >= 64 * MiB and max(sizes) <= CHUNK_BYTES
    assert peak < MiB, f"{peak / MiB:.1f} MiB held to inflate 64 MiB"  # zlib windows and a chunk or two


@pytest.fixture
def server() -> Iterator[HostileHTTPServer]:
    with HostileHTTPServer() as running:
        yield running


async def read(url: str, max_bytes: int) -> bytes:
    async with (
        guarded_client(OPEN, role="input", timeout=httpx.Timeout(5)) as http,
        http.stream("GET", url) as response,
    ):
        assert http.headers["accept-encoding"] == "identity"  # honest servers then send plain bytes
        return await read_body(response, max_bytes, role="input", setting="TM_FETCH_MAX_BYTES")


async def test_read_body_decodes_what_a_server_compresses_anyway(server: HostileHTTPServer) -> None:
    url = server.reply("GET", "x.png", Reply(headers={"Content-Encoding": "gzip"}, body=gzip.compress(DATA)))
    assert await read(url, len(DATA)) == DATA
    with pytest.raises(InputError, match=f"input is larger than the {len(DATA) - 1}-byte limit"):
        await read(url, len(DATA) - 1)  # the decoded size counts, not the 4 KB that came


async def test_read_body_stops_a_bomb_at_the_limit_with_little_memory(server: HostileHTTPServer) -> None:
    url = server.reply("GET", "bomb.png", Reply(headers={"Content-Encoding": "gzip, gzip"}, body=body_bomb()))
    tracemalloc.start()
    try:
        with pytest.raises(InputError, match=rf"input is larger than the {MiB}-byte limit \(TM_FETCH_MAX_BYTES\)"):
            await read(url, MiB)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 * MiB, f"{peak / MiB:.1f} MiB held to refuse a 1 GiB body at 1 MiB"


async def test_read_body_stops_an_endless_body(server: HostileHTTPServer) -> None:
    url = server.reply("GET", "endless.png", Reply(zeros=256 * MiB))  # no Content-Length: ends at close
    with pytest.raises(InputError, match=f"input is larger than the {MiB}-byte limit"):
        await read(url, MiB)
    assert len(await read(server.reply("GET", "small.png", Reply(zeros=1000)), MiB)) == 1000


async def test_read_body_refuses_other_codings_and_broken_streams(server: HostileHTTPServer) -> None:
    url = server.reply("GET", "br.png", Reply(headers={"Content-Encoding": "br"}, body=b"\x0b\x02\x80x\x03"))
    with pytest.raises(InputError, match=f"input URL answered with content coding 'br', .*: {url}"):
        await read(url, MiB)
    url = server.reply("GET", "cut.png", Reply(headers={"Content-Encoding": "gzip"}, body=gzip.compress(DATA)[:-20]))
    with pytest.raises(InputError, match=f"input URL sent a truncated gzip body: {url}"):
        await read(url, MiB)
