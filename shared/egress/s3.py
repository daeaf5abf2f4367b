"""One S3 client per process, opened on first use and kept: what the fetcher and the uploader talk to S3 with.

An aioboto3 client is expensive to make (endpoint and credential resolution, a botocore service model,
an aiohttp session): opening one per object cost 27.4 ms of CPU per PUT, against 1.6 ms on a kept
client (150 KB objects on SeaweedFS). A kept client also keeps its connections alive. It resolves its
endpoint and credentials from boto's standard variables once, when it is first used; credentials that
expire (instance roles, SSO) are refreshed by botocore itself.

Settings that cannot work (no credentials at all, a malformed endpoint, an unknown AWS_PROFILE) raise
on use, as the errors shared/egress/failures.py maps to a ConfigurationError, and no client is kept: the
next use looks again, so credentials that appear later (a mounted secret, a role) are found without a
restart. A client made without credentials would have failed every request for the rest of the process.
A process that never touches S3 never reads its settings, so they cannot stop it from starting.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import aioboto3
from aiobotocore.config import AioConfig
from botocore.exceptions import BotoCoreError, NoCredentialsError

from shared.egress.failures import S3SettingsError, s3_endpoint_problem


class S3Client:
    """The process's S3 client: `await s3.client()` gives it, `await s3.close()` ends it."""

    def __init__(self, max_connections: int = 16) -> None:
        self._config = AioConfig(max_pool_connections=max_connections)
        self._stack = AsyncExitStack()
        self._client: Any = None
        self._opening = asyncio.Lock()

    async def client(self) -> Any:
        """The aiobotocore S3 client (typed Any: its methods are generated from the service model)."""
        if self._client is None:
            async with self._opening:
                if self._client is None:
                    self._client = await self._open()
        return self._client

    async def _open(self) -> Any:
        if problem := s3_endpoint_problem():
            raise S3SettingsError(problem)
        # A session of its own per try, so that a failed one leaves nothing behind for the next to find.
        session = aioboto3.Session()  # reads AWS_PROFILE's files: ProfileNotFound, ConfigParseError
        if await session.get_credentials() is None:
            raise NoCredentialsError()
        try:
            # No endpoint_url: boto resolves it (AWS_ENDPOINT_URL_S3, config files, or AWS itself).
            return await self._stack.enter_async_context(session.client("s3", config=self._config))
        except BotoCoreError:
            raise
        except ValueError as exc:  # botocore's "Invalid endpoint: ...", for one from the AWS config files
            raise S3SettingsError(
                f"the S3 endpoint is malformed ({exc}): check endpoint_url in the AWS config files"
            ) from exc

    async def close(self) -> None:
        self._client = None
        await self._stack.aclose()


@asynccontextmanager
async def s3_client(kept: S3Client | None) -> AsyncIterator[S3Client]:
    """`kept` (a service's client), or a client for this one call, closed after it (tools, tests)."""
    if kept is not None:
        yield kept
        return
    once = S3Client(max_connections=1)
    try:
        yield once
    finally:
        await once.close()
