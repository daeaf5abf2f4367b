"""What bench/samework.py gives both stacks: four real photos on a local HTTP server, outputs in a local S3.

The photos are scikit-image's coffee, astronaut, camera (grey) and chelsea, centre-cropped to 4:3 and
resized to 128 x 96; coffee and camera are served as PNG, astronaut and chelsea as JPEG (quality 90).
Task i reads photo i % 4 and writes s3://<bucket>/<run>/<i>.png. The photo server (bench/sink.py, its
own process, HTTP/1.1 keep-alive) and SeaweedFS (`weed mini`, started as the tests start it) are shared
infrastructure: both stacks use them, so their CPU is reported apart from either stack's.
"""

from __future__ import annotations

import io
import secrets
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import skimage.data
from PIL import Image

from bench.harness import _die_with_parent
from tests.servers import S3Server, start_s3

PHOTOS = (("coffee", "png"), ("astronaut", "jpg"), ("camera", "png"), ("chelsea", "jpg"))
SIZE = (128, 96)
SCALE = 4  # the upscaler's Lanczos fallback: 4x, as the x4 models it stands in for
JPEG_QUALITY = 90


def photo(name: str, suffix: str) -> bytes:
    """scikit-image's `name`, centre-cropped to 4:3, resized to SIZE, encoded as `suffix` (png or jpg)."""
    image = Image.fromarray(getattr(skimage.data, name)())
    width, height = image.size
    if width * 3 > height * 4:  # wider than 4:3: cut the sides
        keep = height * 4 // 3
        image = image.crop(((width - keep) // 2, 0, (width - keep) // 2 + keep, height))
    else:  # taller: cut top and bottom
        keep = width * 3 // 4
        image = image.crop((0, (height - keep) // 2, width, (height - keep) // 2 + keep))
    image = image.resize(SIZE, Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    if suffix == "jpg":
        image.save(buffer, format="JPEG", quality=JPEG_QUALITY)
    else:
        image.save(buffer, format="PNG")
    return buffer.getvalue()


@dataclass(frozen=True)
class Job:
    index: int
    input_url: str
    output_url: str


@dataclass
class Outcome:
    """One task as its client saw it: `sent` when submitted, `done` when its end was seen (perf_counter)."""

    index: int
    sent: float = 0.0
    done: float | None = None
    error: str | None = None  # None with `done` set: succeeded
    resumes: list[str] = field(default_factory=list)  # why each reconnection of its event stream was needed

    @property
    def ok(self) -> bool:
        return self.done is not None and self.error is None


@dataclass
class Infra:
    s3: S3Server
    bucket: str
    photo_server: subprocess.Popen[bytes]
    photo_url: str

    def roots(self) -> dict[str, int]:
        return {"s3 (weed mini)": self.s3.process.pid, "photo server": self.photo_server.pid}

    def jobs(self, run: str, count: int) -> list[Job]:
        return [
            Job(i, f"{self.photo_url}/{PHOTOS[i % len(PHOTOS)][0]}.{PHOTOS[i % len(PHOTOS)][1]}", self.output(run, i))
            for i in range(count)
        ]

    def output(self, run: str, index: int) -> str:
        return f"s3://{self.bucket}/{run}/{index}.png"

    def check_outputs(self, run: str, count: int, samples: int = 8) -> tuple[int, str]:
        """(objects under the run's prefix, what a sample of them is): every output must be there, and the
        first `samples` (each photo twice) must be PNGs SCALE x their input's size."""
        client = self.s3.client()
        found = 0
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=f"{run}/"):
            found += len(page.get("Contents", []))
        want = (SIZE[0] * SCALE, SIZE[1] * SCALE)
        bad = []
        for index in range(min(samples, count)):
            try:
                body = client.get_object(Bucket=self.bucket, Key=f"{run}/{index}.png")["Body"].read()
                image = Image.open(io.BytesIO(body))
                if image.format != "PNG" or image.size != want:
                    bad.append(f"{index}.png is {image.format} {image.size[0]}x{image.size[1]}")
            except Exception as exc:  # a missing or unreadable output is what this check is for
                bad.append(f"{index}.png: {type(exc).__name__}")
        verdict = f"{min(samples, count)} PNG {want[0]}x{want[1]}" if not bad else "; ".join(bad)
        return found, verdict

    def stop(self) -> None:
        if self.photo_server.poll() is None:
            self.photo_server.terminate()
            self.photo_server.wait(10)
        self.s3.stop()


def start_infra(workdir: Path) -> Infra:
    """Write the photos, serve them, start SeaweedFS with a fresh bucket."""
    photo_dir = workdir / "photos"
    photo_dir.mkdir(parents=True)
    paths = []
    for name, suffix in PHOTOS:
        path = photo_dir / f"{name}.{suffix}"
        path.write_bytes(photo(name, suffix))
        paths.append(str(path))
    server = subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("sink.py")), *paths],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        preexec_fn=_die_with_parent,
    )
    assert server.stdout is not None
    line = server.stdout.readline().decode()  # "port <N>", printed once it listens
    if not line.startswith("port "):
        server.kill()
        raise RuntimeError(f"the photo server did not start: {line!r}")
    (workdir / "s3").mkdir()
    try:
        s3 = start_s3(workdir / "s3")
    except BaseException:
        server.kill()
        raise
    bucket = f"samework-{secrets.token_hex(4)}"
    s3.client().create_bucket(Bucket=bucket)
    return Infra(s3, bucket, server, f"http://127.0.0.1:{int(line.split()[1])}")
