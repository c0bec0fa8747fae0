"""Video segmentation: decode -> batch predict -> encode, streamed, so memory stays bounded whatever the length.

Any container and codec that PyAV's FFmpeg reads (mp4, mkv, avi, webm, mov, ...) is read; the first video
stream is segmented and audio is ignored. ``predict_video`` yields ``(frame_index, labels)`` lazily;
``segment_video`` writes an overlay video (same size, frame rate and, with ``every=1``, frame count), a CSV of
class shares per frame and optionally a palette PNG of labels per frame, each under a temporary name that is
renamed only once the whole clip is done, so a failure leaves nothing half-written.

Needs PyAV (``pip install 'fcnseg[video]'``).
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

from ._optional import require
from .data.images import to_float
from .data.palettes import label_image, overlay
from .models.inference import TILE, label_dtype, predict_image, probabilities
from .predict import class_shares

VIDEO_EXTS = {".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".ts", ".wmv", ".flv", ".ogv"}
# Encoders tried in order for the overlay video, with their container suffix.
ENCODERS = (("libx264", ".mp4"), ("mpeg4", ".mp4"), ("libvpx-vp9", ".webm"))


class VideoError(ValueError):
    """A video that cannot be segmented; the message is one line that names the file."""


def _av():
    return require("av", extra="video", what="reading and writing videos")


def is_video(path: str | os.PathLike) -> bool:
    """Whether ``path`` has a video file suffix (``VIDEO_EXTS``)."""
    return Path(path).suffix.lower() in VIDEO_EXTS


@dataclass
class VideoInfo:
    """What the container says about its first video stream: ``size`` ``(W, H)`` in pixels as displayed
    (after rotation), ``fps`` (average, frames per second, a Fraction), ``frames`` (the count the container
    declares, 0 when it does not), ``duration`` in seconds (0.0 when unknown), ``codec`` and ``rotation``
    (degrees counter-clockwise that the player turns the frames, from the display matrix)."""

    path: Path
    size: tuple[int, int]
    fps: Fraction
    frames: int
    duration: float
    codec: str
    rotation: int


def _open(path: Path):
    """``(container, stream)`` for the first video stream of ``path``; ``VideoError`` if there is none."""
    av = _av()
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise VideoError(f"{path}: empty file")
    try:
        container = av.open(str(path))
    except av.FFmpegError as e:
        raise VideoError(f"{path}: not a readable video ({getattr(e, 'strerror', None) or e})") from None
    streams = container.streams.video
    if not streams:
        container.close()
        raise VideoError(f"{path}: no video stream")
    stream = streams[0]
    if stream.codec_context is None or not stream.codec_context.codec.is_decoder:
        container.close()
        raise VideoError(f"{path}: no decoder for its video codec in this FFmpeg build")
    stream.thread_type = "AUTO"  # frame- and slice-threaded decoding
    return container, stream


def video_info(path: str | os.PathLike) -> VideoInfo:
    """Reads the header of ``path`` (and its first frame, for the rotation). Raises ``VideoError``."""
    path = Path(path)
    container, stream = _open(path)
    with container:
        fps = stream.average_rate or stream.guessed_rate or stream.base_rate
        if not fps or fps <= 0:
            raise VideoError(f"{path}: no frame rate in the header")
        w, h = stream.codec_context.width, stream.codec_context.height
        rotation = 0
        for frame in _decode(container, stream, path):
            rotation, (h, w) = _rotation(frame), _upright(frame.to_ndarray(format="rgb24"), frame).shape[:2]
            break
        else:
            raise VideoError(f"{path}: no video frames")
        duration = float(stream.duration * stream.time_base) if stream.duration else (
            container.duration / 1e6 if container.duration else 0.0)
        return VideoInfo(path, (w, h), Fraction(fps), int(stream.frames or 0), duration,
                         stream.codec_context.name, rotation)


def _rotation(frame) -> int:
    return int(round(getattr(frame, "rotation", 0) or 0)) % 360


def _upright(rgb: np.ndarray, frame) -> np.ndarray:
    # The display matrix turns the frame counter-clockwise by ``rotation`` degrees before showing it.
    k = _rotation(frame) // 90
    return np.ascontiguousarray(np.rot90(rgb, k)) if k else rgb


def _decode(container, stream, path: Path):
    av = _av()
    try:
        yield from container.decode(stream)
    except av.FFmpegError as e:
        raise VideoError(f"{path}: corrupt video stream ({getattr(e, 'strerror', None) or e})") from None


def parse_time(value: str | int | float | None, fps: Fraction) -> int | None:
    """A frame number from ``"12"`` (frame 12), ``"2.5s"`` (2.5 seconds in) or a number (a frame number)."""
    if value is None:
        return None
    text = str(value).strip().lower()
    try:
        if text.endswith("s"):
            seconds = float(text[:-1])
            if seconds < 0:
                raise ValueError
            return int(round(seconds * fps))
        frame = int(text)
    except ValueError:
        raise ValueError(f"bad time {value!r}: give a frame number (e.g. 300) or seconds (e.g. 10s, 2.5s)") from None
    if frame < 0:
        raise ValueError(f"bad time {value!r}: frame numbers start at 0")
    return frame


def read_frames(path: str | os.PathLike, *, start: int = 0, end: int | None = None,
                every: int = 1) -> Iterator[tuple[int, np.ndarray]]:
    """Yields ``(frame_index, HxWx3 uint8 RGB)`` for frames ``start, start+every, ...`` before ``end`` (frame
    numbers counted from 0 in decoding order), upright per the rotation metadata. Frames are decoded one at a
    time. Raises ``VideoError`` for a file with no video, corrupt data or no frames in the range, and when
    the stream ends before the frame count or duration the container declares (a truncated file)."""
    for i, _, rgb in _frames(Path(path), start, end, every):
        yield i, rgb


def _frames(path: Path, start: int, end: int | None, every: int) -> Iterator[tuple[int, float, np.ndarray]]:
    """``read_frames`` with each frame's presentation time in seconds from the first frame's."""
    if every < 1:
        raise ValueError(f"every must be at least 1; got {every}")
    container, stream = _open(path)
    declared, n, yielded, first, t = int(stream.frames or 0), 0, 0, None, 0.0
    duration = float(stream.duration * stream.time_base) if stream.duration else (container.duration or 0) / 1e6
    fps = float(stream.average_rate or stream.guessed_rate or 25)
    with container:
        for frame in _decode(container, stream, path):
            i, n = n, n + 1
            if end is not None and i >= end:
                break
            if frame.time is not None:  # timestamps as they are (variable frame rates); else the average rate
                first = frame.time if first is None else first
                t = max(frame.time - first, t + 1e-3 if i else 0.0)
            else:
                t = i / fps if i else 0.0
            if i >= start and (i - start) % every == 0:
                yielded += 1
                yield i, t, _upright(frame.to_ndarray(format="rgb24"), frame)
    if not yielded:
        raise VideoError(f"{path}: no video frames" + (f" in frames {start}..{end}" if n else
                                                       " decode (empty, truncated or corrupt)"))
    if (end is None or n < end) and (n < declared if declared else t + 1 / fps < 0.9 * duration):
        raise VideoError(f"{path}: stream ends after {n} frames ({t + 1 / fps:.2f} s), the header declares "
                         f"{declared or f'{duration:.2f} s'} (truncated?); --end {n} keeps what decodes")


class _Smoother:
    """Exponential moving average of class probabilities across frames: ``s = alpha * s + (1 - alpha) * p``.
    ``alpha`` in [0, 1): the weight of the past (0: off). Reset when the frame size changes."""

    def __init__(self, alpha: float):
        if not 0.0 <= alpha < 1.0:
            raise ValueError(f"smoothing alpha must be in [0, 1); got {alpha}")
        self.alpha, self.state = alpha, None

    def __call__(self, p: torch.Tensor) -> torch.Tensor:
        if self.alpha == 0.0:
            return p
        if self.state is None or self.state.shape != p.shape:
            self.state = p.clone()
        else:
            self.state.mul_(self.alpha).add_(p, alpha=1.0 - self.alpha)
        return self.state


def _segment(model, frames: Iterator[tuple[int, np.ndarray]], *, batch_size: int, smooth: float, tile: int | None,
             flip: bool) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """``(index, frame, labels)`` for each ``(index, frame)``: ``batch_size`` frames per forward pass (frames
    larger than ``tile * tile`` pixels one at a time, in windows), probabilities smoothed in frame order."""
    smoother, dtype = _Smoother(smooth), label_dtype(model.num_classes)
    pending: list[tuple[int, np.ndarray]] = []

    def flush() -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        if not pending:
            return
        batch = torch.stack([to_float(torch.from_numpy(a).permute(2, 0, 1)) for _, a in pending])
        with torch.inference_mode():
            p = probabilities(model, batch, flip)
        for k, (i, a) in enumerate(pending):
            yield i, a, smoother(p[k]).argmax(0).numpy().astype(dtype)
        pending.clear()

    for i, frame in frames:
        h, w = frame.shape[:2]
        if tile and h * w > tile * tile:
            yield from flush()
            _, probs = predict_image(model, frame, tile=tile, flip=flip, return_probs=True)
            yield i, frame, smoother(torch.from_numpy(probs.astype(np.float32))).argmax(0).numpy().astype(dtype)
            continue
        if pending and pending[0][1].shape != frame.shape:
            yield from flush()
        pending.append((i, frame))
        if len(pending) >= batch_size:
            yield from flush()
    yield from flush()


def predict_video(model, path: str | os.PathLike, *, batch_size: int = 4, smooth: float = 0.0, every: int = 1,
                  start: int | str | None = None, end: int | str | None = None, tile: int | None = TILE,
                  flip: bool = False) -> Iterator[tuple[int, np.ndarray]]:
    """Segments a video lazily: yields ``(frame_index, labels)`` with ``HxW`` labels (uint8 up to 256 classes),
    one frame after another, holding at most ``batch_size`` decoded frames.

    Args:
        model: an ``FCN`` or ``OnnxModel`` (see ``fcnseg.predict``).
        path: any video PyAV's FFmpeg reads.
        batch_size: frames per forward pass.
        smooth: ``alpha`` of an exponential moving average of class probabilities across the segmented
            frames (0: each frame on its own; 0.5-0.8 steadies labels that flicker).
        every: segment every Nth frame only.
        start, end: the first frame and the frame to stop before: a frame number (``300``) or seconds
            (``"10s"``).
        tile, flip: as in ``fcnseg.models.inference.predict_image``.

    Raises:
        VideoError: not a video, corrupt or truncated stream, no frames (one line naming the file); raised on
            iteration, a truncated stream only once its frames have been yielded.
    """
    fps = video_info(path).fps if isinstance(start, str) or isinstance(end, str) else Fraction(1)
    frames = read_frames(path, start=parse_time(start, fps) or 0, end=parse_time(end, fps), every=every)
    for i, _, labels in _segment(model, frames, batch_size=batch_size, smooth=smooth, tile=tile, flip=flip):
        yield i, labels


def flicker(prev: np.ndarray, labels: np.ndarray) -> float:
    """Share of pixels (0..1) whose label differs between two ``HxW`` label maps of consecutive frames."""
    return float(np.count_nonzero(prev != labels)) / labels.size


def pick_encoder() -> tuple[str, str]:
    """``(codec, suffix)``: the first of ``ENCODERS`` this FFmpeg build can write (H.264, else MPEG-4 Part 2,
    else VP9)."""
    av = _av()
    for name, suffix in ENCODERS:
        try:
            av.codec.Codec(name, "w")
            return name, suffix
        except (av.FFmpegError, ValueError):
            continue
    raise RuntimeError(f"this FFmpeg build has none of the encoders {', '.join(n for n, _ in ENCODERS)}")


class _Encoder:
    """Writes ``HxWx3`` uint8 RGB frames to a video file at their times (``fps``: the nominal, average rate)."""

    TIME_BASE = Fraction(1, 90000)  # MPEG's clock: exact for every common frame rate

    def __init__(self, path: str, fps: Fraction, size: tuple[int, int], codec: str, fmt: str):
        av = _av()
        w, h = size
        self.container = av.open(path, mode="w", format=fmt)
        self.stream = self.container.add_stream(codec, rate=fps)
        self.stream.width, self.stream.height = w, h
        odd = w % 2 or h % 2
        if odd and codec != "libx264":
            raise VideoError(f"{codec} cannot write odd frame sizes ({w}x{h})")
        self.stream.pix_fmt = "yuv444p" if odd else "yuv420p"  # 4:2:0 needs even sizes
        self.stream.codec_context.time_base = self.TIME_BASE
        if codec == "libx264":
            self.stream.options = {"crf": "20", "preset": "veryfast"}
        self.last = -1

    def write(self, rgb: np.ndarray, seconds: float) -> None:
        """Encodes one frame shown at ``seconds`` from the start (kept strictly increasing)."""
        frame = _av().VideoFrame.from_ndarray(rgb, format="rgb24")
        frame.pts = self.last = max(round(seconds / self.TIME_BASE), self.last + 1)
        frame.time_base = self.TIME_BASE
        self.container.mux(self.stream.encode(frame))

    def close(self) -> None:
        self.container.mux(self.stream.encode())  # flush the encoder's delayed frames
        self.container.close()


class _Staged:
    """Output files and folders written under temporary names in ``out`` and renamed over their final names
    by ``commit``; ``discard`` removes them. A folder that already exists is replaced whole."""

    def __init__(self, out: Path):
        self.out, self.items = out, []

    def file(self, name: str) -> str:
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=self.out)
        os.close(fd)
        self.items.append((tmp, self.out / name))
        return tmp

    def folder(self, name: str) -> Path:
        tmp = tempfile.mkdtemp(prefix=f".{name}.", suffix=".tmp", dir=self.out)
        self.items.append((tmp, self.out / name))
        return Path(tmp)

    def commit(self) -> None:
        umask = os.umask(0)
        os.umask(umask)
        for tmp, final in self.items:
            if Path(tmp).is_dir():
                os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes 0700 folders and mkstemp 0600 files
                if final.is_dir():
                    old = Path(tempfile.mkdtemp(prefix=f".{final.name}.old.", dir=self.out))
                    os.replace(final, old / "x")
                    shutil.rmtree(old)
                os.replace(tmp, final)
            else:
                os.chmod(tmp, 0o666 & ~umask)
                os.replace(tmp, final)
        self.items = []

    def discard(self) -> None:
        for tmp, _ in self.items:
            shutil.rmtree(tmp, ignore_errors=True) if Path(tmp).is_dir() else Path(tmp).unlink(missing_ok=True)
        self.items = []


def _expected(info: VideoInfo, start: int, end: int | None, every: int) -> int | None:
    total = info.frames or (round(info.duration * info.fps) if info.duration else 0)
    if end is not None:
        total = min(total, end) if total else end
    return max(0, -(-(total - start) // every)) if total else None


def segment_video(model, path: str | os.PathLike, out: str | os.PathLike, *, save_labels: bool = False,
                  smooth: float = 0.0, every: int = 1, start: int | str | None = None, end: int | str | None = None,
                  batch_size: int = 4, tile: int | None = TILE, flip: bool = False, alpha: float = 0.5,
                  progress: bool | None = None) -> dict:
    """Segments a video into ``out`` (created): ``NAME_overlay.mp4`` (or ``.webm`` with VP9; the colours over
    the frames, same size, at the input's average frame rate divided by ``every``; audio is dropped),
    ``NAME_frames.csv`` (per segmented frame: ``frame`` number, ``time_s``, ``flicker`` (share of pixels whose
    label changed since the previous segmented frame) and each class's share of the pixels) and, with
    ``save_labels``, ``NAME_labels/NNNNNN.png`` (palette PNGs of class indices, named by frame number).

    Streamed: memory is bounded by ``batch_size`` frames, whatever the length. Everything is written under
    temporary names and renamed once the clip is done; on any error nothing is left behind.
    Other arguments are those of ``predict_video``; ``alpha`` is the colours' opacity in the overlay.

    Returns:
        A summary dict: ``video``, ``frames`` (segmented), ``size`` ``[W, H]``, ``fps`` (output frame rate),
        ``seconds`` (wall time), ``frames_per_s``, ``mean_flicker``, ``encoder`` and ``outputs`` (file names).

    Raises:
        VideoError: see ``read_frames``; FileNotFoundError: no such file.
    """
    from tqdm import tqdm

    path, out = Path(path), Path(out)
    info = video_info(path)
    first, stop = parse_time(start, info.fps) or 0, parse_time(end, info.fps)
    codec, suffix = pick_encoder()
    out.mkdir(parents=True, exist_ok=True)
    staged = _Staged(out)
    bar = tqdm(total=_expected(info, first, stop, every), unit="frame",
               disable=not (sys.stderr.isatty() if progress is None else progress))
    try:
        names = [f"{path.stem}_overlay{suffix}", f"{path.stem}_frames.csv"]
        video_tmp, csv_tmp = staged.file(names[0]), staged.file(names[1])
        labels_dir = staged.folder(f"{path.stem}_labels") if save_labels else None
        encoder = _Encoder(video_tmp, info.fps / every, info.size, codec, suffix[1:])
        frames = (((i, t), rgb) for i, t, rgb in _frames(path, first, stop, every))
        stats = _run(model, frames, encoder, csv_tmp, labels_dir, bar,
                     dict(batch_size=batch_size, smooth=smooth, tile=tile, flip=flip), alpha)
        encoder.close()
        staged.commit()
    except BaseException:
        staged.discard()
        raise
    finally:
        bar.close()
    names += [f"{path.stem}_labels"] if save_labels else []
    return {"video": str(path), "size": list(info.size), "fps": float(info.fps / every), "encoder": codec,
            "outputs": names, **stats}


def _run(model, frames, encoder: _Encoder, csv_path: str, labels_dir: Path | None, bar, kw: dict,
         alpha: float) -> dict:
    """The streamed loop of ``segment_video``: segments, encodes and writes a CSV row per frame."""
    names = [n.replace(",", " ") for n in model.class_names]
    t0, n, prev, total_flicker = time.perf_counter(), 0, None, 0.0
    with open(csv_path, "w") as csv:
        csv.write(",".join(["frame", "time_s", "flicker", *names]) + "\n")
        for (i, t), frame, labels in _segment(model, frames, **kw):
            encoder.write(overlay(frame, labels, model.palette, alpha), t)
            change = flicker(prev, labels) if prev is not None and prev.shape == labels.shape else 0.0
            total_flicker += change
            shares = class_shares(labels, model.num_classes)
            csv.write(f"{i},{t:.3f},{change:.4f}," + ",".join(f"{s:.4f}" for s in shares) + "\n")
            if labels_dir is not None:
                label_image(labels, model.palette).save(labels_dir / f"{i:06d}.png")
            prev, n = labels, n + 1
            bar.update(1)
    seconds = time.perf_counter() - t0
    return {"frames": n, "seconds": round(seconds, 2), "frames_per_s": round(n / seconds, 2),
            "mean_flicker": round(total_flicker / max(1, n - 1), 4)}
