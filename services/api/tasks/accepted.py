"""What POST /api/v1/tasks accepts, as far as JSON Schema can say it, for the OpenAPI document.

submission.py is where requests are checked, with field-level 400s; these fragments describe the
same rules so that a client (or a fuzzer) that follows the document sends requests that work. What
JSON Schema cannot say (which hosts the address policy refuses, file:// inside the directory a
deployment sets aside for it, a dotted S3 bucket's finer rules) stays in the descriptions.
"""

from __future__ import annotations

from pydantic.config import JsonDict

from shared.contracts import catalog
from shared.contracts.options import (
    ALPHA_MODES,
    DEFAULT_FIT,
    FITS,
    MAX_OUTSCALE,
    MAX_TARGET_SIDE,
    PAD_RANGE,
    PRACTICAL_TILE_PAD,
    TILE_RANGE,
)
from shared.images import OUTPUT_FORMATS

# A host name whose last label starts with a letter (all-digit names read as IPv4 numbers), an IPv4
# literal, or a bracketed IPv6 literal (full, or with one "::"); then an optional port.
_HEXTET = "[0-9A-Fa-f]{1,4}"
_IPV6 = rf"({_HEXTET}:){{7}}{_HEXTET}|(({_HEXTET}:){{0,6}}{_HEXTET})?::(({_HEXTET}:){{0,6}}{_HEXTET})?"
_HOST = rf"(([A-Za-z0-9-]+\.)*[A-Za-z][A-Za-z0-9-]*|[0-9]{{1,3}}(\.[0-9]{{1,3}}){{3}}|\[({_IPV6})\])(:[0-9]{{1,5}})?"
_SEGMENT = r"[A-Za-z0-9._~!$&'()*+,;=:@%-]"
_PATH = rf"(/{_SEGMENT}*)*"
_QUERY = rf"(\?({_SEGMENT}|[/?])*)?"
_BUCKET = r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]"
_IMAGE_EXTENSION = r"\.([Pp][Nn][Gg]|[Jj][Pp][Ee]?[Gg]|[Ww][Ee][Bb][Pp])"
_KEY = rf"(/{_SEGMENT}+)+"

CALLBACK_PATTERN = rf"^https?://{_HOST}{_PATH}{_QUERY}$"
INPUT_URL: JsonDict = {
    "type": "string",
    "pattern": rf"^(https?|s3)://{_HOST}{_PATH}{_QUERY}$",
    "description": "input_url: http(s) or s3://bucket/key (file:// too, inside TM_FILE_ROOT where it is set); "
    "private, loopback and link-local addresses are refused",
}
_KEYED_OUTPUT_URL: JsonDict = {
    "type": "string",
    "pattern": rf"^(s3://{_BUCKET}|https?://{_HOST}){_PATH}/{_SEGMENT}*{_IMAGE_EXTENSION}{_QUERY}$",
    "description": "output_url whose key ends in .png, .jpg, .jpeg or .webp: the format follows it",
}
OUTPUT_URL: JsonDict = {
    "anyOf": [
        _KEYED_OUTPUT_URL,
        {
            "type": "string",
            "pattern": rf"^(s3://{_BUCKET}{_KEY}|https?://{_HOST}{_KEY}{_QUERY})$",
            "description": "output_url with any object key, and kwargs.output_format set",
        },
    ],
    "description": "output_url: s3://bucket/key, an S3 or presigned https URL, or any http(s) URL that takes a PUT "
    "(file:// too, inside TM_FILE_ROOT where it is set)",
}
# Without kwargs.output_format, the output URL's extension names the format.
OUTPUT_FORMAT_RULE: JsonDict = {
    "if": {
        "not": {
            "required": ["kwargs"],
            "properties": {
                "kwargs": {"required": ["output_format"], "properties": {"output_format": {"type": "string"}}}
            },
        }
    },
    "then": {"properties": {"args": {"prefixItems": [True, _KEYED_OUTPUT_URL]}}},
}
# Exactly the two prefixItems: maxItems says "no more". `items` (what would follow them) is a string schema
# rather than `false`: openapi-python-client cannot read a boolean schema there and refuses the document.
ARGS: JsonDict = {"prefixItems": [INPUT_URL, OUTPUT_URL], "items": {"type": "string"}, "minItems": 2, "maxItems": 2}


def _nullable(schema: JsonDict) -> JsonDict:
    return {"anyOf": [schema, {"type": "null"}]}


KWARGS: JsonDict = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "model": _nullable({"enum": list(catalog.selectable_names())}),
        "outscale": _nullable({"type": "number", "exclusiveMinimum": 0, "maximum": MAX_OUTSCALE}),
        **{
            side: {
                **_nullable({"type": "integer", "minimum": 1, "maximum": MAX_TARGET_SIDE}),
                "description": f"{side}: the output's {side.removeprefix('target_')} in pixels instead of a "
                "scale (the network runs at its own, a Lanczos resize follows); one side alone keeps the "
                "aspect ratio; not with outscale; both sides at most TM_MAX_OUTPUT_PIXELS",
            }
            for side in ("target_width", "target_height")
        },
        "fit": {
            **_nullable({"enum": list(FITS)}),
            "description": f"fit: how target_width x target_height is filled (exactly that size): contain "
            f"(centred, transparent or, in JPEG, white padding), cover (centre-cropped), stretch; unset or "
            f"null: {DEFAULT_FIT}; only with a target",
        },
        "tile": _nullable(
            {"anyOf": [{"const": 0}, {"type": "integer", "minimum": TILE_RANGE.start, "maximum": TILE_RANGE.stop - 1}]}
        ),
        "tile_pad": {
            **_nullable({"type": "integer", "minimum": PAD_RANGE.start, "maximum": PAD_RANGE.stop - 1}),
            "description": "tile_pad: input pixels of context read around each tile; unset or null: the model's "
            "receptive field for the compact models (tiled output equals untiled within 1/255), "
            f"{PRACTICAL_TILE_PAD} for the RRDBNet models",
        },
        "pre_pad": {"type": "integer", "minimum": PAD_RANGE.start, "maximum": PAD_RANGE.stop - 1},
        "denoise_strength": _nullable({"type": "number", "minimum": 0, "maximum": 1}),
        "output_format": _nullable({"enum": list(OUTPUT_FORMATS)}),
        "alpha_mode": {"enum": list(ALPHA_MODES)},
    },
    # denoise_strength is a setting of one model only
    "if": {"properties": {"denoise_strength": {"type": "number"}}, "required": ["denoise_strength"]},
    "then": {"properties": {"model": {"const": catalog.DENOISE_MODEL}}, "required": ["model"]},
}
