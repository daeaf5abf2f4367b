"""A target-size task through the whole pipeline: exactly the asked size, letterboxed, in S3 and in the result."""

from __future__ import annotations

import io
import uuid

import httpx
import numpy as np
from PIL import Image

from tests.e2e.images import photo
from tests.servers import S3Server, StaticHTTPServer
from tests.system import System

TASK = "image_super_resolution_pipeline"


async def test_contain_gives_exactly_the_box_with_transparent_bars(
    system: System, http_server: StaticHTTPServer, s3_server: S3Server, s3_bucket: str
) -> None:
    source = http_server.add(f"{uuid.uuid4().hex}.png", photo("chelsea.png", (48, 32)))
    body = {
        "task_name": TASK,
        "args": [source, f"s3://{s3_bucket}/boxed.png"],
        "kwargs": {"target_width": 100, "target_height": 100, "fit": "contain"},
        "sync": True,
    }
    async with httpx.AsyncClient(base_url=system.api_url, timeout=120) as api:
        status = (await api.post("/api/v1/tasks", json=body)).json()

    assert status["state"] == "SUCCESS", status["error"]
    assert (status["result"]["output_width"], status["result"]["output_height"]) == (100, 100)
    stored = s3_server.client().get_object(Bucket=s3_bucket, Key="boxed.png")["Body"].read()
    image = Image.open(io.BytesIO(stored))
    assert (image.size, image.mode) == ((100, 100), "RGBA")
    # 48 x 32 fits as 100 x 67 (the network ran at x4, then Lanczos), centred: 16 rows above, 17 below.
    alpha = np.asarray(image.getchannel("A"))
    assert (alpha[:16] == 0).all() and (alpha[83:] == 0).all() and (alpha[16:83] == 255).all()
