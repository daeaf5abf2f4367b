"""Fixtures of the `task-manager up` tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.upscaler.mirror import ReleaseMirror


@pytest.fixture
def mirror() -> Iterator[ReleaseMirror]:
    """A model release mirror with no files: `up` fetches the routed models from it, and finds none.

    model_dir holds realesr-animevideov3 only; `up` never reaches GitHub, and the session's model dir
    stays as it is.
    """
    mirror = ReleaseMirror()
    yield mirror
    mirror.close()
