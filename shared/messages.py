"""Typed messages that travel between stages (the subjects, streams and ids they use: shared/wire.py).

Messages are msgpack on JetStream. An image small enough (TM_INLINE_IMAGE_MAX_BYTES) travels in the
message itself (`input_image`, `output_image`); a larger one is stored in the object store under its
task's key and named in `stored_objects` (shared/blobs.py decides). Every model ignores unknown
fields, so an older service can read a newer message.
"""

from __future__ import annotations

from enum import StrEnum
from typing import TYPE_CHECKING, Annotated, Any

import msgpack
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictInt

if TYPE_CHECKING:
    from shared.taskstate.status import TaskStatus

SCHEMA_VERSION = 1
PRIORITIES = range(0, 11)  # 0 lowest .. 10 highest, as the API accepts them
TASK_NAME = "image_super_resolution_pipeline"


def _integral_float_to_int(value: Any) -> Any:
    """5.0 is the integer 5 in JSON (and in JSON Schema's "integer"); 5.5, "5" and true stay refused."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


WholeNumber = Annotated[StrictInt, BeforeValidator(_integral_float_to_int)]


class Stage(StrEnum):
    FETCH = "fetch"
    CLASSIFY = "classify"
    UPSCALE = "upscale"
    UPLOAD = "upload"


PIPELINE: tuple[Stage, ...] = (Stage.FETCH, Stage.CLASSIFY, Stage.UPSCALE, Stage.UPLOAD)


def next_stage(stage: Stage) -> Stage | None:
    """The stage after `stage` in the pipeline, or None after the last one."""
    index = PIPELINE.index(stage)
    return PIPELINE[index + 1] if index + 1 < len(PIPELINE) else None


class Category(StrEnum):
    """What an image shows; it chooses the upscaling model."""

    PORTRAIT = "portrait"  # a human face is found
    ANIME = "anime"  # flat-shaded illustration, cartoon, anime
    TEXT = "text"  # document, screenshot of text, line art dominated by glyphs
    PHOTO = "photo"  # everything else: natural photographs


class Classification(BaseModel):
    model_config = ConfigDict(extra="ignore")

    category: Category
    width: int
    height: int
    aspect_ratio: float  # width / height, rounded to 2 places


class UpscaleOptions(BaseModel):
    """Validated task kwargs that steer the upscaler (see services/api validation)."""

    model_config = ConfigDict(extra="ignore")

    model: str | None = None  # official model name; None: routed from the category
    outscale: float | None = None  # final scale; None: the model's native scale
    # An output size instead of a scale (pixels; one alone keeps the aspect ratio), and how both fill
    # their box: contain | cover | stretch (None: contain). See services/upscaler/fit.py.
    target_width: WholeNumber | None = None
    target_height: WholeNumber | None = None
    fit: str | None = None
    tile: WholeNumber | None = None  # tile size in input pixels; 0: no tiling; None: automatic
    tile_pad: WholeNumber | None = None  # context read around each tile; None: from the model (options.tile_overlap)
    pre_pad: WholeNumber = 0
    denoise_strength: float | None = None  # realesr-general-x4v3 only
    output_format: str | None = None  # png | jpeg | webp; None: from the output URL's extension
    alpha_mode: str = "premultiplied"  # premultiplied | network | resize: how alpha goes through the upscaler


_IMAGES = {"input_image", "output_image"}


class TaskMessage(BaseModel):
    """The work item each stage receives; it accumulates what later stages need."""

    model_config = ConfigDict(extra="ignore")

    schema_version: int = SCHEMA_VERSION
    task_id: str
    # The task's run this message belongs to (TaskStatus.run): a stage drops a message of an earlier run,
    # one left queued when the task was ended and started again.
    run: int = 1
    task_name: str = TASK_NAME
    priority: int = 5
    input_url: str
    output_url: str
    options: UpscaleOptions = Field(default_factory=UpscaleOptions)
    submitted_at: str
    classification: Classification | None = None
    output_width: int | None = None
    output_height: int | None = None
    model_used: str | None = None
    worker_type: str | None = None  # "gpu" | "cpu", set by the upscaler
    input_image: bytes | None = None  # the fetched bytes, when small enough to travel here (to the upscaler)
    output_image: bytes | None = None  # the upscaled bytes, likewise (to the uploader)
    stored_objects: list[str] = Field(default_factory=list)  # object-store names holding this task's images
    # The task's state as the stage before last wrote it, and that write's KV revision: the next stage's
    # compare-and-set tries it instead of reading the entry first (a stale one fails and is read afresh).
    state_hint: str | None = None
    state_revision: int | None = None

    @classmethod
    def first(cls, status: TaskStatus, options: UpscaleOptions, written: tuple[bytes, int] | None) -> TaskMessage:
        """The first stage's message of a task's run (submission or retry), from its entry: the submitted URLs,
        options and priority, and the entry as `written` (value, revision), so the fetcher's start needs no read."""
        assert status.input_url is not None and status.output_url is not None  # every task the API creates has both
        return cls(
            task_id=status.task_id,
            run=status.run,
            task_name=status.task_name,
            priority=status.priority,
            input_url=status.input_url,
            output_url=status.output_url,
            options=options,
            submitted_at=status.submitted_at,
            state_hint=written[0].decode() if written else None,
            state_revision=written[1] if written else None,
        )

    def pack(self) -> bytes:
        # Bytes as msgpack binaries, not JSON strings: the images cost their size and no encoding.
        fields = self.model_dump(mode="json", exclude_none=True, exclude=_IMAGES)
        fields.update({name: value for name in _IMAGES if (value := getattr(self, name)) is not None})
        return msgpack.packb(fields)

    def summary(self) -> dict[str, Any]:
        """The message as JSON-ready fields, each carried image as its size (for people and logs)."""
        fields = self.model_dump(mode="json", exclude_none=True, exclude=_IMAGES | {"state_hint"})
        fields.update({f"{name}_bytes": len(value) for name in _IMAGES if (value := getattr(self, name)) is not None})
        return fields

    @classmethod
    def unpack(cls, data: bytes, run_if_absent: int = 1) -> TaskMessage:
        """Decode a packed message; one packed before messages carried their run is of `run_if_absent` (a stage
        passes the run its message id names: shared/wire.py `message_run`)."""
        payload: dict[str, Any] = msgpack.unpackb(data)
        if isinstance(payload, dict):
            payload.setdefault("run", run_if_absent)
        return cls.model_validate(payload)
