"""The upload guard of ``fcnseg serve``: body size (413 before parsing), content sniffing (415), image size from
the header (413, before any pixel is decoded), safe file names, and security headers on every response."""

import io
import json
import re
import warnings

from fastapi import HTTPException
from PIL import Image

# Formats Pillow may open here, by sniffed content. Others (EPS would run Ghostscript, PSD, ICNS, ...) are refused.
# Multi-picture JPEGs (MPO) open through JPEG's entry. Image.init() registers the plugins first, because
# Image.open(formats=...) looks the names up before loading any plugin beyond the basic ones.
Image.init()
FORMATS = tuple(f for f in ("JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF") if f in Image.OPEN)
FORMATS_TEXT = "JPEG, PNG, WebP, BMP, TIFF or GIF"
# A body declared larger than the limit is still read (and dropped) up to this many bytes before the 413 is sent,
# so that clients which write the whole request before reading the answer see the 413, not a reset connection.
DRAIN_LIMIT = 256 * 2**20


class Guard:
    """ASGI middleware: refuses request bodies over ``max_bytes`` with 413 (from Content-Length before reading,
    or while reading a body of undeclared length) and adds security headers to every response."""

    HEADERS = [
        (b"x-content-type-options", b"nosniff"),
        (b"referrer-policy", b"no-referrer"),
        (b"x-frame-options", b"DENY"),
        # The page loads only its own files; label PNGs come back as data: URLs, photos and videos (the upload and
        # the overlay video) as blob: URLs.
        (b"content-security-policy", b"default-src 'self'; img-src 'self' data: blob:; media-src 'self' blob:; "
                                     b"object-src 'none'; base-uri 'none'; frame-ancestors 'none'"),
    ]

    def __init__(self, app, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    def _too_large(self, size: str) -> str:
        return (f"upload too large: {size}, more than the limit of {self.max_bytes / 2**20:.1f} MiB "
                "(fcnseg serve --max-upload-mb)")

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_headers(message) -> None:
            if message["type"] == "http.response.start":
                names = {k.lower() for k, _ in message.get("headers", [])}
                message["headers"] = list(message.get("headers", [])) + [h for h in self.HEADERS if h[0] not in names]
            await send(message)

        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None:
            try:
                declared = int(declared)
            except ValueError:
                return await send_json(send_with_headers, 400, "invalid Content-Length header")
            if declared > self.max_bytes:
                if declared <= DRAIN_LIMIT:
                    more = True
                    while more:
                        message = await receive()
                        more = message["type"] == "http.request" and message.get("more_body", False)
                return await send_json(send_with_headers, 413, self._too_large(f"{declared / 2**20:.1f} MiB"))
        received = 0

        async def counted_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    # Raised inside the endpoint's body parsing; FastAPI passes HTTPException through as the reply.
                    raise HTTPException(413, self._too_large(f"more than {received / 2**20:.1f} MiB"))
            return message

        await self.app(scope, counted_receive, send_with_headers)


async def send_json(send, status: int, detail: str) -> None:
    """Answers ``{"detail": detail}`` with ``status`` straight from ASGI (before the app runs) and closes."""
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


def safe_name(name: str | None) -> str:
    """The upload's file name as messages and downloads show it: its last part, printable ASCII only."""
    base = re.split(r"[\\/]", name or "")[-1]
    base = re.sub(r"[^A-Za-z0-9._ -]", "_", base).strip()[:100]
    return base or "upload"


def sniff(data: bytes, name: str, max_pixels: int) -> tuple[str, int, int]:
    """The format and size of an uploaded image from its header, or the HTTPException that refuses it."""
    if not data:
        raise HTTPException(400, f"{name}: empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit speaks below
            with Image.open(io.BytesIO(data), formats=FORMATS) as im:
                fmt, (w, h) = im.format, im.size
    except Image.DecompressionBombError as e:
        raise HTTPException(413, f"{name}: refused as a decompression bomb ({e})") from None
    except Exception:  # noqa: BLE001 - Pillow reports unknown content with assorted exception types
        start = data[:8]
        raise HTTPException(415, f"{name}: not a {FORMATS_TEXT} image, or its header is damaged (the content "
                                 f"starts with {start!r}; the file name and declared type are not trusted)") from None
    if w * h > max_pixels:
        raise HTTPException(413, f"{name}: {w}x{h} is {w * h / 1e6:.1f} Mpixel, more than the limit of "
                                 f"{max_pixels / 1e6:.1f} Mpixel (fcnseg serve --max-pixels)")
    return fmt, w, h
