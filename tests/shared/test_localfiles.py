"""file:// paths confined to TM_FILE_ROOT: `..`, percent-encoding and symbolic links, on a real directory tree."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from shared.config import Settings
from shared.egress.localfiles import file_url_path, resolve_within, target_within
from shared.runtime.errors import InputError


@pytest.fixture
def tree(tmp_path: Path) -> tuple[Path, Path]:
    """(root, outside): root/in.png, root/sub/, and outside/secret.txt beside the root."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "sub").mkdir(parents=True)
    outside.mkdir()
    (root / "in.png").write_bytes(b"inside")
    (outside / "secret.txt").write_bytes(b"secret")
    return root, outside


def leaves(root: Path, shown: str, role: str = "input") -> str:
    return re.escape(f"{role} file:// URL leaves TM_FILE_ROOT ({root}): {shown}")


def test_paths_inside_the_root_resolve_to_themselves(tree: tuple[Path, Path]) -> None:
    root, _ = tree
    assert resolve_within(root, f"{root}/in.png", "input") == root / "in.png"
    assert resolve_within(root, f"{root}/sub/../in.png", "input") == root / "in.png"  # `..` that stays inside
    assert resolve_within(root, f"{root}/new/deeper/x.png", "input") == root / "new/deeper/x.png"  # not there yet
    assert target_within(root, f"{root}/new/x.png") == root / "new/x.png"


def test_unset_root_refuses_everything(tree: tuple[Path, Path]) -> None:
    root, _ = tree
    message = re.escape(f"file:// input URLs are not allowed here (TM_FILE_ROOT is not set): {root}/in.png")
    with pytest.raises(InputError, match=message):
        resolve_within(None, f"{root}/in.png", "input")
    with pytest.raises(InputError, match="file:// output URLs are not allowed here"):
        target_within(None, f"{root}/out.png")


@pytest.mark.parametrize("escape", ["/etc/passwd", "{root}/../outside/secret.txt", "{root}/sub/../../outside/x.png"])
def test_climbing_out_is_refused(tree: tuple[Path, Path], escape: str) -> None:
    root, _ = tree
    path = escape.format(root=root)
    with pytest.raises(InputError, match=leaves(root, path)):
        resolve_within(root, path, "input")
    with pytest.raises(InputError, match=leaves(root, path, "output")):
        target_within(root, path)


def test_percent_encoded_dots_are_decoded_before_the_check(tree: tuple[Path, Path]) -> None:
    root, _ = tree
    path = file_url_path(f"file://{root}/%2e%2e/outside/secret.txt", "input")
    assert path == f"{root}/../outside/secret.txt"
    with pytest.raises(InputError, match="leaves TM_FILE_ROOT"):
        resolve_within(root, path, "input")
    assert file_url_path(f"file://localhost{root}/a%20b.png", "input") == f"{root}/a b.png"
    with pytest.raises(InputError, match="names a remote host"):
        file_url_path("file://evil.example/etc/passwd", "input")


def test_a_link_to_a_file_outside_is_refused_to_read(tree: tuple[Path, Path]) -> None:
    root, outside = tree
    (root / "innocent.png").symlink_to(outside / "secret.txt")
    with pytest.raises(InputError, match=leaves(root, f"{root}/innocent.png")):
        resolve_within(root, f"{root}/innocent.png", "input")
    # Written, the link is replaced by the new file, so the write stays inside the root.
    assert target_within(root, f"{root}/innocent.png") == root / "innocent.png"


def test_a_link_to_a_directory_outside_is_refused(tree: tuple[Path, Path]) -> None:
    root, outside = tree
    (root / "door").symlink_to(outside, target_is_directory=True)
    for path in (f"{root}/door/secret.txt", f"{root}/door/new/x.png"):
        with pytest.raises(InputError, match=leaves(root, path)):
            resolve_within(root, path, "input")
        with pytest.raises(InputError, match=leaves(root, path, "output")):
            target_within(root, path)


def test_links_that_stay_inside_are_followed(tree: tuple[Path, Path]) -> None:
    root, _ = tree
    (root / "alias.png").symlink_to(root / "in.png")
    (root / "shortcut").symlink_to(root / "sub", target_is_directory=True)
    assert resolve_within(root, f"{root}/alias.png", "input") == root / "in.png"
    assert target_within(root, f"{root}/shortcut/out.png") == root / "sub" / "out.png"


def test_a_root_reached_through_a_link_still_holds(tree: tuple[Path, Path], tmp_path: Path) -> None:
    root, _ = tree
    (tmp_path / "root-link").symlink_to(root, target_is_directory=True)
    assert resolve_within(tmp_path / "root-link", f"{root}/in.png", "input") == root / "in.png"
    assert resolve_within(root, f"{tmp_path}/root-link/in.png", "input") == root / "in.png"


@pytest.mark.parametrize(("path", "message"), [("relative/in.png", "not an absolute path"), ("/a\0b", "absolute")])
def test_paths_that_are_not_plain_absolute_paths_are_refused(tree: tuple[Path, Path], path: str, message: str) -> None:
    with pytest.raises(InputError, match=message):
        resolve_within(tree[0], path, "input")


@pytest.mark.parametrize("name", ["", ".", ".."])
def test_a_write_needs_a_file_name(tree: tuple[Path, Path], name: str) -> None:
    root, _ = tree
    with pytest.raises(InputError, match="has no file name"):
        target_within(root, f"{root}/sub/{name}")


def test_the_setting_is_off_by_default_and_absolute_when_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TM_FILE_ROOT", raising=False)
    monkeypatch.setenv("TM_FETCH_ALLOW_PRIVATE_NETWORKS", "true")  # has nothing to do with file://
    assert Settings().file_root is None
    monkeypatch.setenv("TM_FILE_ROOT", "")
    assert Settings().file_root is None
    monkeypatch.setenv("TM_FILE_ROOT", "/srv/images")
    assert Settings().file_root == Path("/srv/images")
    monkeypatch.setenv("TM_FILE_ROOT", "images")
    with pytest.raises(ValidationError, match="TM_FILE_ROOT must be an absolute path"):
        Settings()
