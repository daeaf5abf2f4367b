"""Message encoding and subject naming (pure logic)."""

from __future__ import annotations

import msgpack

from shared.messages import Stage, TaskMessage, UpscaleOptions, next_stage
from shared.wire import work_filter, work_subject


def test_task_message_round_trips_through_msgpack() -> None:
    message = TaskMessage(
        task_id="abc", priority=9, input_url="https://x/a.png", output_url="s3://b/k.png",
        options=UpscaleOptions(model="realesr-animevideov3", outscale=2), submitted_at="2025-01-01T00:00:00Z",
    )  # fmt: skip
    assert TaskMessage.unpack(message.pack()) == message


def test_unknown_fields_from_newer_senders_are_ignored() -> None:
    payload = {"task_id": "a", "input_url": "i", "output_url": "o", "submitted_at": "t", "new_field": [1, 2]}
    assert TaskMessage.unpack(msgpack.packb(payload)).task_id == "a"


def test_subjects_carry_priority_stage_and_task() -> None:
    assert work_subject(7, Stage.UPSCALE, "id1") == "tm.work.p7.upscale.id1"
    assert work_filter(7, Stage.UPSCALE) == "tm.work.p7.upscale.*"
    assert next_stage(Stage.FETCH) == Stage.CLASSIFY
    assert next_stage(Stage.UPLOAD) is None
