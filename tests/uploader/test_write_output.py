"""Writing outputs to a real S3 server (SeaweedFS), a real HTTP server and the local disk."""

from __future__ import annotations

import socket
import stat
import uuid
from pathlib import Path

import httpx
import pytest
from botocore.config import Config

from services.uploader.s3 import write_output
from shared.egress.netguard import AddressPolicy
from shared.egress.transport import guarded_client
from shared.runtime.errors import InputError, RetryableError
from tests.servers import S3Server, StaticHTTPServer

PNG = "image/png"


async def write(
    url: str,
    data: bytes,
    *,
    endpoint: str | None = None,
    allow_private: bool = True,
    deadline_s: float | None = None,
    file_root: Path | None = None,
) -> None:
    policy = AddressPolicy.build(allow_private, s3_endpoint=endpoint)
    async with guarded_client(policy, role="output", timeout=httpx.Timeout(5)) as http:
        await write_output(
            url,
            data,
            PNG,
            http=http,
            policy=policy,
            s3=None,
            s3_endpoint=endpoint,
            deadline_s=deadline_s,
            file_root=file_root,
        )


def stored(s3: S3Server, bucket: str, key: str) -> tuple[bytes, str]:
    obj = s3.client().get_object(Bucket=bucket, Key=key)
    return obj["Body"].read(), obj["ContentType"]


async def test_s3_url_put_then_get_and_twice_is_fine(s3_env: S3Server, s3_bucket: str) -> None:
    url = f"s3://{s3_bucket}/out/a%20cat.png"
    await write(url, b"first", allow_private=False)
    await write(url, b"second", allow_private=False)  # a redelivered upload just writes again
    assert stored(s3_env, s3_bucket, "out/a cat.png") == (b"second", PNG)


async def test_path_style_url_on_the_endpoint(s3_env: S3Server, s3_bucket: str) -> None:
    # Recognised as the deployment's S3, so it is signed with our credentials rather than PUT anonymously.
    await write(f"{s3_env.endpoint_url}/{s3_bucket}/p.png", b"path", endpoint=s3_env.endpoint_url)
    assert stored(s3_env, s3_bucket, "p.png") == (b"path", PNG)


@pytest.mark.parametrize(
    ("signature_version", "signed_type"),
    # SigV4 signs only the host unless asked; SigV2 always signs Content-Type, so the presigner must name it.
    [("s3v4", None), ("s3v4", PNG), ("s3", PNG)],
)
async def test_presigned_put_url(
    s3_env: S3Server, s3_bucket: str, signature_version: str, signed_type: str | None
) -> None:
    signer = s3_env.client(Config(signature_version=signature_version))
    params = {"Bucket": s3_bucket, "Key": "signed.png"} | ({"ContentType": signed_type} if signed_type else {})
    url = signer.generate_presigned_url("put_object", Params=params)
    await write(url, b"presigned", endpoint=s3_env.endpoint_url)
    assert stored(s3_env, s3_bucket, "signed.png") == (b"presigned", PNG)


async def test_plain_put(http_server: StaticHTTPServer) -> None:
    name = f"{uuid.uuid4().hex}.png"
    await write(http_server.url(f"put/{name}"), b"plain")
    assert http_server.puts[name] == b"plain"
    put = [r for r in http_server.requests if r.method == "PUT" and r.path == f"/put/{name}"]
    assert put[0].headers["Content-Type"] == PNG


async def test_plain_put_errors(http_server: StaticHTTPServer) -> None:
    with pytest.raises(InputError, match="output URL returned HTTP 403"):
        await write(http_server.url("status/403"), b"x")
    with pytest.raises(RetryableError, match="output URL returned HTTP 503") as caught:
        await write(http_server.url("status/503?retry_after=3"), b"x")
    assert caught.value.delay_s == 3
    with pytest.raises(InputError, match="output URL host 127.0.0.1 is a loopback address, refused"):
        await write(http_server.url("put/refused.png"), b"x", allow_private=False)
    assert "refused.png" not in http_server.puts
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        with pytest.raises(RetryableError, match="ConnectError"):
            await write(f"http://127.0.0.1:{closed.getsockname()[1]}/x.png", b"x")


async def test_a_put_that_outlasts_its_deadline_is_retried(http_server: StaticHTTPServer) -> None:
    name = f"{uuid.uuid4().hex}.png"
    with pytest.raises(RetryableError, match=r"did not take the upload within the 0.3 s limit \(TM_FETCH_TIMEOUT_S\)"):
        await write(http_server.url(f"slow/3000/{name}"), b"x", deadline_s=0.3)


async def test_local_file_written_atomically(tmp_path: Path) -> None:
    target = tmp_path / "out dir" / "cat.png"
    url = f"file://{str(target).replace(' ', '%20')}"
    # Off unless TM_FILE_ROOT is set, whatever the address policy says.
    with pytest.raises(InputError, match=r"file:// output URLs are not allowed here \(TM_FILE_ROOT is not set\)"):
        await write(url, b"x")
    assert not target.parent.exists()
    await write(url, b"local", allow_private=False, file_root=tmp_path)
    await write(url, b"again", file_root=tmp_path)
    assert target.read_bytes() == b"again"
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    assert [p.name for p in target.parent.iterdir()] == ["cat.png"]  # no temporary files left behind
    (tmp_path / "blocker").write_bytes(b"")
    with pytest.raises(InputError, match="cannot write output file"):
        await write(f"file://{tmp_path}/blocker/cat.png", b"x", file_root=tmp_path)


@pytest.mark.parametrize(
    "escape",
    [
        "file:///etc/task-manager-test.conf",
        "file://{root}/../made/x.png",
        "file://{root}/%2e%2e/made/x.png",
        "file://{root}/sub/%2E%2E/%2e%2e/made/x.png",
        "file://{root}/door/made/x.png",
    ],
)
async def test_local_files_cannot_be_written_outside_the_root(tmp_path: Path, escape: str) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (root / "door").symlink_to(tmp_path, target_is_directory=True)
    with pytest.raises(InputError, match=r"output file:// URL leaves TM_FILE_ROOT \(.*root\): /"):
        await write(escape.format(root=root), b"x", file_root=root)
    assert not (tmp_path / "made").exists()  # not even the directories
    assert not Path("/etc/task-manager-test.conf").exists()


async def test_a_link_in_the_output_place_is_replaced_not_written_through(tmp_path: Path) -> None:
    root, victim = tmp_path / "root", tmp_path / "victim.conf"
    root.mkdir()
    victim.write_bytes(b"keep me")
    (root / "out.png").symlink_to(victim)
    await write(f"file://{root}/out.png", b"png", file_root=root)
    assert victim.read_bytes() == b"keep me"
    assert not (root / "out.png").is_symlink() and (root / "out.png").read_bytes() == b"png"


async def test_links_inside_the_root_are_followed_for_directories(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "alias").symlink_to(tmp_path / "real", target_is_directory=True)
    await write(f"file://{tmp_path}/alias/new/out.png", b"png", file_root=tmp_path)
    assert (tmp_path / "real" / "new" / "out.png").read_bytes() == b"png"


async def test_missing_bucket_is_input_error(s3_env: S3Server) -> None:
    with pytest.raises(InputError, match="NoSuchBucket"):
        await write("s3://no-such-bucket-here/x.png", b"x")


async def test_bad_url_is_input_error() -> None:
    with pytest.raises(InputError, match="no object key"):
        await write("s3://some-bucket/", b"x")
