"""file:// URLs: refused unless TM_FILE_ROOT names a directory, and then confined to it.

The fetcher reads a file:// input and the uploader writes a file:// output on their own filesystem,
for whoever submitted the task, so such a URL must not reach outside the one directory the operator
set aside. "Inside" is decided on the real path: the URL's path is percent-decoded first (`%2e%2e`
is `..`), then every symbolic link and `..` is resolved (`os.path.realpath`), so neither a climb
nor a link that points out escapes. A write is the exception in one place: its last component is
not followed, because the uploader replaces whatever is there (a link included) with a new file.

The API checks at submission (a 400 naming the field); the fetcher and the uploader check again
where they open the file, on the filesystem that counts.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import unquote, urlsplit

from shared.runtime.errors import InputError


def file_url_path(url: str, role: str) -> str:
    """The decoded path of a file:// URL on this machine (no host, or localhost); InputError otherwise."""
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise InputError(f"invalid {role} URL ({exc}): {url}") from exc
    if parts.netloc not in ("", "localhost"):
        raise InputError(f"file:// {role} URL names a remote host: {url}")
    return unquote(parts.path)


def resolve_within(root: Path | None, path: str | os.PathLike[str], role: str) -> Path:
    """The real path of `path`, every link followed, if it lies inside `root` (TM_FILE_ROOT); else InputError.

    `root` None: file:// is off, and every path is refused.
    """
    text = _absolute(root, path, role)
    return _inside(root, Path(os.path.realpath(text)), text, role)


def target_within(root: Path | None, path: str | os.PathLike[str], role: str = "output") -> Path:
    """Where a write to `path` lands: its directory's real path (inside `root`) and its own name, not followed.

    A link in the last place is replaced by the written file, never written through, so only the
    directories on the way have to stay inside `root`.
    """
    text = _absolute(root, path, role)
    directory, name = os.path.split(text)
    if name in ("", ".", ".."):
        raise InputError(f"file:// {role} URL has no file name: {text}")
    return _inside(root, Path(os.path.realpath(directory)), text, role) / name


def _absolute(root: Path | None, path: str | os.PathLike[str], role: str) -> str:
    text = os.fspath(path)
    if root is None:
        raise InputError(f"file:// {role} URLs are not allowed here (TM_FILE_ROOT is not set): {text}")
    if "\0" in text or not os.path.isabs(text):
        raise InputError(f"file:// {role} URL is not an absolute path: {text!r}")
    return text


def _inside(root: Path | None, real: Path, shown: str, role: str) -> Path:
    assert root is not None  # _absolute refused it
    # The root resolved now, not at start-up: a root that is itself a link may be repointed by the operator.
    real_root = Path(os.path.realpath(root))
    if real != real_root and real_root not in real.parents:
        # The real path is not shown: it would tell where a link inside the root points.
        raise InputError(f"{role} file:// URL leaves TM_FILE_ROOT ({root}): {shown}")
    return real
