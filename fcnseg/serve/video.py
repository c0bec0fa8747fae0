"""``POST /predict/video`` for ``fcnseg serve``: a short uploaded video in, its overlay video out.

The upload (already bounded by the server's ``max_upload_bytes``) is written to a temporary folder, its header
checked against ``max_video_seconds`` and the server's ``max_pixels`` (per frame), segmented with
``fcnseg.video.segment_video`` in a model worker (the same queue as images) and the folder removed.
"""

import math
import tempfile
from pathlib import Path
from typing import Annotated

from fastapi import FastAPI, File, Form, HTTPException, UploadFile
from fastapi.responses import Response

from .._optional import available
from .workers import Busy

MAX_VIDEO_SECONDS = 20.0


def segment_upload(model, data: bytes, name: str, max_pixels: int, max_seconds: float, smooth: float) -> dict:
    """Segments one uploaded video (runs in a worker thread). Returns ``{"video": bytes, "media_type", "frames",
    "frames_per_s"}``. Raises ``HTTPException``: 400 empty, 413 too long or too large frames, 422 not a video."""
    from ..video import VIDEO_EXTS, VideoError, segment_video, video_info

    if not data:
        raise HTTPException(400, f"{name}: empty file")
    suffix = Path(name).suffix.lower() if Path(name).suffix.lower() in VIDEO_EXTS else ".bin"
    with tempfile.TemporaryDirectory(prefix="fcnseg-video-") as tmp:
        path = Path(tmp) / f"upload{suffix}"
        path.write_bytes(data)
        try:
            info = video_info(path)
            w, h = info.size
            if w * h > max_pixels:
                raise HTTPException(413, f"{name}: {w}x{h} frames are more than {max_pixels} pixels")
            if info.duration > max_seconds:
                raise HTTPException(413, f"{name}: {info.duration:.1f} s is longer than {max_seconds:g} s")
            # A header may understate the length: never segment more frames than max_seconds allows.
            r = segment_video(model, path, Path(tmp) / "out", smooth=smooth,
                              end=math.floor(max_seconds * info.fps) + 1, progress=False)
        except VideoError as e:
            raise HTTPException(422, str(e).replace(str(path), name)) from None
        out = Path(tmp) / "out" / r["outputs"][0]
        media = "video/webm" if out.suffix == ".webm" else "video/mp4"
        return {"video": out.read_bytes(), "media_type": media, "suffix": out.suffix, "frames": r["frames"],
                "frames_per_s": r["frames_per_s"]}


def add_video_route(app: FastAPI, models: dict, gate, busy, refuse, safe_name, max_pixels: int, errors: dict,
                    max_seconds: float = MAX_VIDEO_SECONDS) -> None:
    """Adds ``POST /predict/video`` to ``app`` (``gate``: the server's ``Gate``; ``busy(gate)``: its 503
    response; ``refuse()``: the server's admission, a 503 response or None; ``safe_name``: its upload-name
    cleaner; ``errors``: the error responses for the schema).
    Nothing is added when PyAV is not installed."""
    if not available("av"):
        return
    default = next(iter(models))

    @app.post("/predict/video", summary=f"segment a short video (up to {max_seconds:g} s): the overlay video",
              response_class=Response,
              responses={200: {"content": {"video/mp4": {"schema": {"type": "string", "format": "binary"}}},
                               "description": "the overlay video (H.264 MP4; VP9 WebM without H.264)"},
                         **errors})
    async def predict_video_route(
        file: Annotated[UploadFile, File(description="the video (mp4, mkv, webm, avi, mov, ...)")],
        model: Annotated[str | None, Form(description="a name from GET /models (default: the first)",
                                          json_schema_extra={"enum": list(models)})] = None,
        smooth: Annotated[float, Form(ge=0.0, lt=1.0, description="EMA of probabilities over frames (0: off)")]
        = 0.0,
    ):
        name = safe_name(file.filename)
        key = model or default
        if key not in models:
            raise HTTPException(422, f"model: unknown model {key!r}; loaded: {', '.join(models)}")
        refused = refuse()  # the image route's admission: queue full or shutting down
        if refused is not None:
            return refused
        data = await file.read()
        try:
            result, waited = await gate.run(segment_upload, models[key], data, name, max_pixels, max_seconds, smooth)
        except Busy:
            return busy(gate)
        finally:
            del data
        stem = name.rsplit(".", 1)[0].replace(" ", "_") or "upload"
        return Response(result["video"], media_type=result["media_type"], headers={
            "Content-Disposition": f'inline; filename="{stem}_overlay{result["suffix"]}"',
            "X-Fcnseg-Frames": str(result["frames"]), "X-Fcnseg-Frames-Per-S": f"{result['frames_per_s']:.2f}",
            "X-Fcnseg-Queue-Ms": f"{1000 * waited:.1f}"})
