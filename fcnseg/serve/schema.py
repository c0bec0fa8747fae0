"""The bodies of ``fcnseg serve``'s JSON answers (pydantic models); they make the OpenAPI schema."""

from typing import Literal

from pydantic import BaseModel, Field


class ErrorBody(BaseModel):
    detail: str = Field(description="what was wrong, naming the file or field")


class ClassShare(BaseModel):
    index: int = Field(description="the class's label value in the PNG")
    name: str
    colour: str = Field(description="#rrggbb, the class's colour in the label PNG")
    share: float = Field(description="fraction of the image's pixels given this class (0..1)")


class PredictBody(BaseModel):
    model: str
    filename: str
    format: str = Field(description="the image format sniffed from the content, e.g. JPEG")
    width: int
    height: int
    ms: float = Field(description="milliseconds to decode, segment and encode (excluding the wait in the queue)")
    queue_ms: float = Field(description="milliseconds spent waiting for a worker")
    batch: int = Field(1, description="images segmented in the same forward pass (dynamic batching)")
    shares: list[ClassShare] = Field(description="every class of the model, in label order")
    labels_png: str = Field(description="base64 palette PNG of class indices at the image's size")


class ReadyBody(BaseModel):
    status: Literal["ready"]
    models: list[str]


class ModelBody(BaseModel):
    name: str
    source: str = Field(description="the pretrained name or the file it was loaded from")
    num_classes: int
    classes: list[str]
    palette: list[str] = Field(description="#rrggbb per class")
    default: bool


class HealthBody(BaseModel):
    status: Literal["ok"]
    models: list[str]
    workers: int
    queue: int
    running: int = Field(description="requests now being decoded or segmented")
    waiting: int = Field(description="requests now waiting for a worker")
    served: int = Field(description="images segmented since the start")
    max_upload_bytes: int
    max_pixels: int
    formats: list[str]


ERRORS = {
    400: {"model": ErrorBody, "description": "malformed request (for example an empty file)"},
    413: {"model": ErrorBody, "description": "upload or image too large"},
    415: {"model": ErrorBody, "description": "not an image in an accepted format (sniffed from the content)"},
    422: {"model": ErrorBody, "description": "invalid field, unknown model, or an image that cannot be decoded"},
    503: {"model": ErrorBody, "description": "queue full; retry after the Retry-After header's seconds"},
}


def hex_colour(c) -> str:
    """``#rrggbb`` of an RGB triple (0..255 each)."""
    return "#{:02x}{:02x}{:02x}".format(*(int(v) for v in c[:3]))
