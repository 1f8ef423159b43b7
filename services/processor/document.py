"""PDFs (pypdfium2): page count, page size, encryption, title/author and a first-page preview.

Runs in the processor's pool process. PDFium reads the document through
`RangedReader` (FPDF_LoadCustomDocument), so only the trailer, the cross-reference
data and the objects of the first page are fetched, never the whole file.

Policy: a PDF that needs a password to open is rejected (`encrypted`): it can't be
previewed, and nothing in it can be checked. One encrypted with an empty user
password (an "owner password" that only restricts printing or copying) opens
like any other and is described with `encrypted: true`. A PDF PDFium can't
parse is rejected as `corrupt`. Content that takes too long to render (a
"billion laughs" of nested form XObjects) is stopped by the pool's wall-time
limit.
"""

from __future__ import annotations

import math
from typing import Any

import pypdfium2
import pypdfium2.raw as pdfium_c
from PIL import Image

from services.processor.imaging import Rejection
from services.processor.media import (
    MediaLimits,
    MediaReport,
    MediaSource,
    analyse,
    clean_text,
)
from services.processor.ranged import RangedReader
from shared.detected import DetectedDocument

# PDF's own limit on a page side (ISO 32000: 14 400 user units of 1/72 in).
MAX_PAGE_POINTS = 14_400.0


def analyse_pdf(source: MediaSource, detected: str, limits: MediaLimits) -> MediaReport | Rejection:
    """Describe the PDF at `source` and make its first-page thumbnails (pool process)."""
    return analyse("document", source, detected, limits, lambda r: describe_pdf(r, limits))


def describe_pdf(
    reader: RangedReader, limits: MediaLimits
) -> tuple[DetectedDocument, Image.Image] | Rejection:
    """The facts and the rendered first page, or why the file is refused."""
    try:
        pdf = pypdfium2.PdfDocument(reader)
    except pypdfium2.PdfiumError as exc:
        return _open_failure(reader, exc)
    try:
        return _describe(pdf, reader, limits)
    except pypdfium2.PdfiumError as exc:
        if reader.failure is not None:
            return Rejection(
                "over_limit", f"the PDF can't be previewed within limits: {reader.failure}"
            )
        return Rejection("corrupt", f"the PDF's first page can't be read: {exc}")
    finally:
        pdf.close()


def _open_failure(reader: RangedReader, exc: Any) -> Rejection:
    if reader.failure is not None:
        return Rejection("over_limit", f"the PDF can't be opened within limits: {reader.failure}")
    if getattr(exc, "err_code", None) == pdfium_c.FPDF_ERR_PASSWORD:
        return Rejection(
            "encrypted", "the PDF is password-protected: it can't be checked or previewed"
        )
    if getattr(exc, "err_code", None) == pdfium_c.FPDF_ERR_SECURITY:
        return Rejection("encrypted", "the PDF uses an unsupported security handler")
    return Rejection("corrupt", f"the PDF can't be parsed ({_pdfium_reason(exc)})")


def _describe(
    pdf: Any, reader: RangedReader, limits: MediaLimits
) -> tuple[DetectedDocument, Image.Image] | Rejection:
    pages = len(pdf)
    if pages > limits.max_pages:
        return Rejection(
            "over_limit", f"the PDF has {pages} pages, over the limit of {limits.max_pages}"
        )
    width, height = pdf.get_page_size(0)
    if not (_valid_side(width) and _valid_side(height)):
        return Rejection("corrupt", f"the first page's size ({width}×{height} pt) is invalid")
    metadata = pdf.get_metadata_dict(skip_empty=True)
    encrypted = pdfium_c.FPDF_GetSecurityHandlerRevision(pdf.raw) != -1
    version = pdf.get_version()

    bound = max(limits.sizes)
    scale = bound / max(width, height)
    if round(width * scale) * round(height * scale) > limits.max_pixels:
        return Rejection("decompression_bomb", "the first page's preview is over the pixel limit")
    page = pdf[0]
    try:
        bitmap = page.render(scale=scale, may_draw_forms=False)
        picture = bitmap.to_pil().convert("RGB")
        bitmap.close()
    finally:
        page.close()
    if reader.failure is not None:
        return Rejection(
            "over_limit", f"the PDF's first page can't be read within limits: {reader.failure}"
        )
    facts = DetectedDocument(
        pages=pages,
        page_width=round(float(width), 2),
        page_height=round(float(height), 2),
        encrypted=encrypted,
        title=clean_text(metadata.get("Title")),
        author=clean_text(metadata.get("Author")),
        version=_version(version),
    )
    return facts, picture


def _version(number: object) -> str | None:
    """PDFium's 17 → "1.7"."""
    if not isinstance(number, int) or number <= 0:
        return None
    return f"{number // 10}.{number % 10}"


def _valid_side(points: float) -> bool:
    return math.isfinite(points) and 0 < points <= MAX_PAGE_POINTS * 75  # UserUnit up to 75


def _pdfium_reason(exc: Any) -> str:
    code = getattr(exc, "err_code", None)
    return {
        pdfium_c.FPDF_ERR_SUCCESS: "it has no readable page tree",
        pdfium_c.FPDF_ERR_FORMAT: "not a valid PDF structure",
        pdfium_c.FPDF_ERR_FILE: "the file could not be read",
    }.get(code, clean_text(str(exc), 200) or "unknown error")
