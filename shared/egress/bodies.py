"""Reading a response body from a URL a client chose: at most so many bytes, counted after decoding.

httpx undoes Content-Encoding by itself, inflating each network chunk in one zlib call with no bound:
a 1,842-byte answer sent as `Content-Encoding: gzip, gzip` (gzip of gzip of 1 GiB of zeros) grew the
fetcher to 4.6 GB. So bodies are read raw (`aiter_raw`) and decoded here, every layer by a zlib
decompressor that is never asked for more than CHUNK_BYTES at a time, and reading stops as soon as
the decoded total passes the caller's limit. Only identity, gzip (x-gzip) and deflate (zlib or raw)
are read: any other coding (br, zstd, compress) is refused, since our clients ask for
`Accept-Encoding: identity` (shared.egress.transport) and only a server that compresses regardless gets here.

A declared Content-Length counts raw bytes, and so does the raw limit: the decoded limit plus what
the codings can add to bytes they cannot compress (`Decoder.raw_limit`). Over it, a body is refused
(before reading, if its Content-Length says so); under it, its length promises nothing about the decoded
size. Time is the caller's to bound: one `asyncio.timeout` around the request and this read, so that
however slowly bytes come (or however many decode to nothing), it ends.
"""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import Iterable, Iterator

import httpx

from shared.egress.failures import safe_url
from shared.runtime.errors import InputError

CHUNK_BYTES = 64 * 1024  # the most one zlib call may produce, in any layer
_GZIP = zlib.MAX_WBITS | 16
_WBITS: dict[str, int | None] = {"gzip": _GZIP, "x-gzip": _GZIP, "deflate": None}  # None: told by its header
READ_CODINGS = "identity, gzip, deflate"


class CodingError(ValueError):
    """A content coding this module does not read, or a stream that is corrupt or cut short."""


class Decoder:
    """Undoes a Content-Encoding (`gzip, gzip`: gzip applied twice), the last coding applied first."""

    def __init__(self, content_encoding: str) -> None:
        codings = [name.strip().lower() for name in content_encoding.split(",")]
        codings = [name for name in codings if name and name != "identity"]
        for name in codings:
            if name not in _WBITS:
                raise CodingError(f"answered with content coding {name!r}, which is not read here ({READ_CODINGS})")
        self._layers = [_Inflater(name) for name in reversed(codings)]

    def raw_limit(self, max_bytes: int) -> int:
        """The most raw bytes that `max_bytes` of content can take in these codings: deflate adds at most
        about 0.03 % to bytes it cannot compress, gzip 18 header bytes; 1 % and 64 bytes a layer is ample."""
        limit = max_bytes
        for _ in self._layers:
            limit += limit // 100 + 64
        return limit

    def decode(self, raw: bytes) -> Iterator[bytes]:
        """The decoded bytes of the next raw chunk, in pieces of at most CHUNK_BYTES, made as they are taken."""
        pieces: Iterator[bytes] = iter((raw,))
        for layer in self._layers:  # generators: each layer inflates only what the next one asks for
            pieces = layer.inflate(pieces)
        return pieces

    def finish(self) -> None:
        """After the last raw chunk: raises CodingError if a stream has not ended."""
        for layer in self._layers:
            layer.finish()


class _Inflater:
    """One coding undone. Each zlib call is capped at CHUNK_BYTES; the input it could not consume yet
    (`unconsumed_tail`) is fed again, so a kilobyte that means a gigabyte comes out a chunk at a time."""

    def __init__(self, coding: str) -> None:
        self.coding = coding
        self._head = b""  # deflate: the first bytes, until there are two to tell zlib from raw deflate
        self._zlib: zlib._Decompress | None = None

    def inflate(self, pieces: Iterable[bytes]) -> Iterator[bytes]:
        for piece in pieces:
            yield from self._inflate(piece)

    def _inflate(self, data: bytes) -> Iterator[bytes]:
        full = False  # the last call filled its cap: zlib may hold more output for input it has consumed
        while data or full:
            if self._zlib is None or self._zlib.eof:
                if self._zlib is not None and self.coding == "deflate":
                    raise CodingError("sent bytes after the end of its deflate stream")
                data = self._head + data
                wbits = _WBITS[self.coding] or _deflate_wbits(data)
                if wbits is None:  # one byte of a deflate body so far
                    self._head = data
                    return
                self._head, self._zlib = b"", zlib.decompressobj(wbits)  # gzip: a body may hold several members
            try:
                out = self._zlib.decompress(data, CHUNK_BYTES)
            except zlib.error as exc:
                raise CodingError(f"sent a corrupt {self.coding} body ({exc})") from None
            full = len(out) == CHUNK_BYTES and not self._zlib.eof
            data = self._zlib.unused_data if self._zlib.eof else self._zlib.unconsumed_tail
            if out:
                yield out

    def finish(self) -> None:
        if self._head or (self._zlib is not None and not self._zlib.eof):
            raise CodingError(f"sent a truncated {self.coding} body")


def _deflate_wbits(data: bytes) -> int | None:
    """The window bits for a deflate body: meant to be zlib (RFC 9110), sent raw by some servers; its header tells."""
    if len(data) < 2:
        return None
    is_zlib = data[0] & 0x0F == 8 and data[0] >> 4 <= 7 and (data[0] << 8 | data[1]) % 31 == 0
    return zlib.MAX_WBITS if is_zlib else -zlib.MAX_WBITS


async def read_body(response: httpx.Response, max_bytes: int, *, role: str, setting: str | None = None) -> bytes:
    """The body of a streamed, unread `response` with its content codings undone, at most `max_bytes`.

    `role` ("input", "output") and `setting` (the limit's variable, if it has one) word the errors: all
    InputError, for a body over the limit (raw or decoded), a coding not read here, a corrupt or cut stream.
    """
    url = safe_url(str(response.request.url))
    too_large = InputError(
        f"{role} is larger than the {max_bytes}-byte limit" + (f" ({setting})" if setting else "") + f": {url}"
    )
    body, raw_bytes = bytearray(), 0
    try:
        decoder = Decoder(response.headers.get("content-encoding", ""))
        raw_limit = decoder.raw_limit(max_bytes)
        declared = response.headers.get("content-length", "")
        if declared.isascii() and declared.isdigit() and int(declared) > raw_limit:
            raise too_large
        async for raw in response.aiter_raw():
            raw_bytes += len(raw)
            if raw_bytes > raw_limit:
                raise too_large
            for piece in decoder.decode(raw):
                body += piece
                if len(body) > max_bytes:
                    raise too_large
                await asyncio.sleep(0)  # a chunk may decode to many pieces: let the deadline and heartbeats in
        decoder.finish()
    except CodingError as exc:
        raise InputError(f"{role} URL {exc}: {url}") from None
    return bytes(body)
