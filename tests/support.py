"""Small builders shared by tests (no fixtures here)."""

from __future__ import annotations

import io

from PIL import Image


def make_jpeg(width: int = 640, height: int = 480, *, exif: Image.Exif | None = None) -> bytes:
    """A real JPEG with some structure, so it is not trivially compressible."""
    img = Image.linear_gradient("L").resize((width, height)).convert("RGB")
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=85, exif=exif if exif is not None else Image.Exif())
    return buf.getvalue()
