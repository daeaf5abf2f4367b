"""A lease on a singleton role, held in a KV bucket whose entries expire (TM_LEASE_TTL_S).

The holder renews well within the TTL with compare-and-set on its own revision; if it dies, the
entry expires and another process takes the role. Two processes can never both hold it: creating
the key fails while it exists, and a renewal fails once anyone else wrote it.
"""

from __future__ import annotations

from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue


class Lease:
    def __init__(self, kv: KeyValue, role: str, holder: str) -> None:
        self._kv = kv
        self.role = role
        self.holder = holder
        self._revision: int | None = None

    @property
    def held(self) -> bool:
        return self._revision is not None

    async def keep(self) -> bool:
        """Take the role if it is free, or renew it if we hold it; True while we hold it."""
        try:
            if self._revision is None:
                self._revision = await self._kv.create(self.role, self.holder.encode())
            else:
                self._revision = await self._kv.update(self.role, self.holder.encode(), last=self._revision)
        except (KeyWrongLastSequenceError, KeyNotFoundError):
            self._revision = None
        return self.held

    async def release(self) -> None:
        if self._revision is not None:
            try:
                await self._kv.delete(self.role, last=self._revision)
            except (KeyWrongLastSequenceError, KeyNotFoundError):
                pass
            self._revision = None
