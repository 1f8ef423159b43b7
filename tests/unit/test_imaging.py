"""The processor's imaging core: sniffing, limits, orientation, thumbnails, EXIF privacy.

Every image is generated here with Pillow (or assembled byte by byte where
Pillow cannot make it cheaply, like a 30000×30000 px bomb).
"""

from __future__ import annotations

import hashlib
import io
import pickle
import random
import struct
import time
import warnings
import zlib
from dataclasses import replace

import pytest
from PIL import Image, ImageChops, ImageCms, ImageDraw, ImageFile, ImageStat
from PIL.ExifTags import GPS, IFD, Base

from services.processor.imaging import (
    Derivative,
    FileReport,
    ImageReport,
    Rejection,
    analyse_file,
    analyse_image,
)
from shared.sniff import sniff_type, type_matches

SIZES = (1024, 256)
LIMIT = 50_000_000
RED, BLUE = (220, 20, 20), (20, 20, 220)


# --- building test files ---------------------------------------------------


def encode(im: Image.Image, fmt: str, **params: object) -> bytes:
    out = io.BytesIO()
    im.save(out, fmt, **params)
    return out.getvalue()


def halves(size: tuple[int, int], left: tuple[int, ...], right: tuple[int, ...]) -> Image.Image:
    """An RGB image whose left half is `left` and right half is `right`."""
    im = Image.new("RGB", size, right)
    ImageDraw.Draw(im).rectangle((0, 0, size[0] // 2 - 1, size[1] - 1), fill=left)
    return im


def camera_exif(orientation: int) -> Image.Exif:
    exif = Image.Exif()
    exif[Base.Make] = "Canon"
    exif[Base.Model] = "EOS R5"
    exif[Base.Orientation] = orientation
    exif[IFD.Exif] = {Base.DateTimeOriginal: "2024:05:01 12:34:56"}
    exif[IFD.GPSInfo] = {
        GPS.GPSLatitudeRef: "N",
        GPS.GPSLatitude: (52.0, 31.0, 12.25),
        GPS.GPSLongitudeRef: "E",
        GPS.GPSLongitude: (13.0, 24.0, 36.5),
    }
    return exif


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def uniform_png(side: int, rows_per_block: int = 250) -> bytes:
    """A valid 8-bit grayscale PNG of side×side zero pixels, assembled without a raster.

    Deflate blocks ending in a full flush are self-contained, so one compressed
    block of rows is repeated instead of compressing `side`² bytes.
    """
    assert side % rows_per_block == 0
    block = (b"\x00" * (1 + side)) * rows_per_block
    repeated = zlib.compressobj(9, zlib.DEFLATED, -15)
    middle = repeated.compress(block) + repeated.flush(zlib.Z_FULL_FLUSH)
    final = zlib.compressobj(9, zlib.DEFLATED, -15)
    tail = final.compress(block) + final.flush()
    count = side // rows_per_block
    adler = 1
    for _ in range(count):
        adler = zlib.adler32(block, adler)
    stream = b"\x78\xda" + middle * (count - 1) + tail + struct.pack(">I", adler)
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", stream)
        + png_chunk(b"IEND", b"")
    )


def with_jpeg_dimensions(data: bytes, width: int, height: int) -> bytes:
    """The JPEG with its frame header (SOF0) claiming another size."""
    sof = data.index(b"\xff\xc0")
    return data[: sof + 5] + struct.pack(">HH", height, width) + data[sof + 9 :]


def webp_chunks(data: bytes) -> list[bytes]:
    """The chunk ids of a RIFF/WebP file."""
    assert data[:4] == b"RIFF"
    assert data[8:12] == b"WEBP"
    ids, pos = [], 12
    while pos + 8 <= len(data):
        kind, length = data[pos : pos + 4], struct.unpack("<I", data[pos + 4 : pos + 8])[0]
        ids.append(kind)
        pos += 8 + length + (length & 1)
    return ids


def analyse(
    data: bytes, declared: str, *, sizes: tuple[int, ...] = SIZES, max_pixels: int = LIMIT
) -> ImageReport | Rejection:
    return analyse_image(data, declared_type=declared, sizes=sizes, max_pixels=max_pixels)


def report(
    data: bytes, declared: str, *, sizes: tuple[int, ...] = SIZES, threads: int = 1
) -> ImageReport:
    result = analyse_image(
        data, declared_type=declared, sizes=sizes, max_pixels=LIMIT, threads=threads
    )
    assert isinstance(result, ImageReport), result
    return result


def rejection(data: bytes, declared: str, *, max_pixels: int = LIMIT) -> Rejection:
    result = analyse(data, declared, max_pixels=max_pixels)
    assert isinstance(result, Rejection), result
    return result


def decoded(derivative: Derivative) -> Image.Image:
    im = Image.open(io.BytesIO(derivative.data), formats=["WEBP"])
    im.load()
    return im


def pixel(im: Image.Image, xy: tuple[int, int]) -> tuple[int, ...]:
    value = im.getpixel(xy)
    assert value is not None
    return value if isinstance(value, tuple) else (int(value),)


def close_to(actual: tuple[int, ...], expected: tuple[int, ...], tolerance: int = 24) -> bool:
    return all(abs(a - e) <= tolerance for a, e in zip(actual, expected, strict=False))


@pytest.fixture(scope="session")
def png_bomb() -> bytes:
    data = uniform_png(30000)
    assert len(data) < 1_000_000  # a few hundred KB that would decode to 900 MB
    return data


@pytest.fixture(scope="session")
def camera_jpeg() -> bytes:
    """1600×1200 stored, orientation 6 (displayed 1200×1600), with camera, GPS, ICC, XMP."""
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    return encode(
        halves((1600, 1200), RED, BLUE),
        "JPEG",
        quality=90,
        exif=camera_exif(6),
        icc_profile=icc,
        xmp=b"<x:xmpmeta xmlns:x='adobe:ns:meta/'/>",
    )


# --- orientation, thumbnails, metadata ---------------------------------------


def test_dimensions_are_reported_after_exif_orientation() -> None:
    data = encode(Image.new("RGB", (4000, 3000), RED), "JPEG", exif=camera_exif(6))

    result = report(data, "image/jpeg")

    assert (result.width, result.height) == (3000, 4000)
    assert [(d.width, d.height) for d in result.derivatives] == [(768, 1024), (192, 256)]


def test_thumbnails_are_rotated_upright(camera_jpeg: bytes) -> None:
    result = report(camera_jpeg, "image/jpeg")

    # Orientation 6: the stored left edge (red) is the displayed top.
    for derivative in result.derivatives:
        im = decoded(derivative).convert("RGB")
        assert close_to(pixel(im, (im.width // 2, im.height // 8)), RED)
        assert close_to(pixel(im, (im.width // 2, im.height * 7 // 8)), BLUE)


def test_thumbnails_are_webp_within_their_bounds(camera_jpeg: bytes) -> None:
    result = report(camera_jpeg, "image/jpeg")

    assert [d.size for d in result.derivatives] == [1024, 256]
    for derivative in result.derivatives:
        im = decoded(derivative)
        assert im.format == "WEBP"
        assert derivative.content_type == "image/webp"
        assert im.size == (derivative.width, derivative.height)
        assert max(im.size) == derivative.size


def test_thumbnails_carry_no_metadata(camera_jpeg: bytes) -> None:
    source = Image.open(io.BytesIO(camera_jpeg))
    assert {"exif", "icc_profile", "xmp"} <= set(source.info)  # the original carries all three

    for derivative in report(camera_jpeg, "image/jpeg").derivatives:
        assert set(webp_chunks(derivative.data)) <= {b"VP8 ", b"VP8L", b"VP8X", b"ALPH"}
        im = decoded(derivative)
        assert not im.getexif()
        assert not {"exif", "icc_profile", "xmp"} & set(im.info)


def test_exif_summary_has_camera_and_time_but_never_the_position(camera_jpeg: bytes) -> None:
    assert Image.open(io.BytesIO(camera_jpeg)).getexif().get_ifd(IFD.GPSInfo)  # GPS is there

    summary = report(camera_jpeg, "image/jpeg").exif

    assert summary == {
        "camera_make": "Canon",
        "camera_model": "EOS R5",
        "taken_at": "2024-05-01T12:34:56",
        "orientation": 6,
        "has_gps": True,
    }


def test_image_without_exif_has_an_empty_summary() -> None:
    summary = report(encode(Image.new("RGB", (64, 48)), "PNG"), "image/png").exif

    assert summary == {
        "camera_make": None,
        "camera_model": None,
        "taken_at": None,
        "orientation": None,
        "has_gps": False,
    }


def test_report_describes_the_original(camera_jpeg: bytes) -> None:
    result = report(camera_jpeg, "image/jpeg")

    assert result.format == "JPEG"
    assert result.mode == "RGB"
    assert result.frames == 1
    assert result.detected_type == "image/jpeg"
    assert result.sha256 == hashlib.sha256(camera_jpeg).hexdigest()


def test_small_images_are_never_upscaled() -> None:
    result = report(encode(halves((200, 100), RED, BLUE), "PNG"), "image/png")

    assert [(d.size, d.width, d.height) for d in result.derivatives] == [
        (1024, 200, 100),
        (256, 200, 100),
    ]


def test_sizes_may_come_in_any_order() -> None:
    result = report(encode(Image.new("RGB", (1000, 500)), "PNG"), "image/png", sizes=(64, 512))

    assert [(d.size, d.width, d.height) for d in result.derivatives] == [
        (512, 512, 256),
        (64, 64, 32),
    ]


def test_png_transparency_survives_as_webp_alpha() -> None:
    im = Image.new("RGBA", (800, 600), (0, 160, 0, 255))
    ImageDraw.Draw(im).rectangle((0, 0, 399, 599), fill=(0, 0, 0, 0))

    result = report(encode(im, "PNG"), "image/png")

    assert result.mode == "RGBA"
    for derivative in result.derivatives:
        thumb = decoded(derivative)
        assert thumb.mode == "RGBA"
        assert pixel(thumb, (thumb.width // 8, thumb.height // 2))[3] == 0
        opaque = pixel(thumb, (thumb.width * 7 // 8, thumb.height // 2))
        assert opaque[3] == 255
        assert close_to(opaque[:3], (0, 160, 0))


def test_palette_transparency_survives_as_webp_alpha() -> None:
    im = Image.new("P", (300, 300), 1)
    im.putpalette([0, 0, 0, 200, 0, 0] + [0] * 762)
    ImageDraw.Draw(im).rectangle((0, 0, 149, 299), fill=0)

    result = report(encode(im, "PNG", transparency=0), "image/png")

    thumb = decoded(result.derivatives[-1])
    assert thumb.mode == "RGBA"
    assert pixel(thumb, (10, 128))[3] == 0
    assert pixel(thumb, (240, 128))[3] == 255


def test_animated_gif_counts_frames_and_thumbnails_the_first() -> None:
    frames = [Image.new("RGB", (300, 200), colour) for colour in (RED, (20, 200, 20), BLUE)]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100)

    result = report(data, "image/gif")

    assert result.frames == 3
    assert result.format == "GIF"
    assert [(d.width, d.height) for d in result.derivatives] == [(300, 200), (256, 171)]
    thumb = decoded(result.derivatives[-1]).convert("RGB")
    assert close_to(pixel(thumb, (128, 85)), RED)


def test_cmyk_jpeg_becomes_rgb() -> None:
    data = encode(Image.new("CMYK", (640, 480), (255, 0, 0, 0)), "JPEG", quality=95)

    result = report(data, "image/jpeg")

    assert result.mode == "CMYK"
    for derivative in result.derivatives:
        thumb = decoded(derivative)
        assert thumb.mode == "RGB"
        assert close_to(pixel(thumb, (10, 10)), (0, 255, 255))


def test_sixteen_bit_png_is_scaled_to_eight_bits_not_clipped() -> None:
    data = encode(Image.new("I;16", (300, 200), 0x8000), "PNG")

    result = report(data, "image/png")

    assert result.mode == "I;16"
    thumb = decoded(result.derivatives[-1]).convert("L")
    assert close_to(pixel(thumb, (50, 50)), (128,), tolerance=3)


def test_grayscale_jpeg_thumbnails_decode() -> None:
    data = encode(Image.linear_gradient("L").resize((2048, 1024)), "JPEG")

    result = report(data, "image/jpeg")

    assert result.mode == "L"
    assert [(d.width, d.height) for d in result.derivatives] == [(1024, 512), (256, 128)]


def test_webp_input_is_thumbnailed() -> None:
    data = encode(halves((1200, 600), RED, BLUE), "WEBP", quality=90)

    result = report(data, "image/webp")

    assert result.format == "WEBP"
    assert [(d.width, d.height) for d in result.derivatives] == [(1024, 512), (256, 128)]


def test_threads_change_nothing_but_the_wall_time() -> None:
    data = encode(Image.effect_noise((3000, 2000), 30).convert("RGB"), "JPEG", quality=85)

    alone = report(data, "image/jpeg")
    shared = report(data, "image/jpeg", threads=3)

    assert replace(shared, derivatives=[]) == replace(alone, derivatives=[])
    for mine, theirs in zip(alone.derivatives, shared.derivatives, strict=True):
        assert (mine.size, mine.width, mine.height) == (theirs.size, theirs.width, theirs.height)
        # A strip's box may round a filter weight differently, moving a rare
        # sample by 1 before encoding; the pictures stay the same.
        stat = ImageStat.Stat(ImageChops.difference(decoded(mine), decoded(theirs)))
        assert max(stat.mean) < 0.01


def test_reports_survive_pickling_for_the_process_pool(camera_jpeg: bytes) -> None:
    result = report(camera_jpeg, "image/jpeg")
    assert pickle.loads(pickle.dumps(result)) == result  # noqa: S301 - our own bytes

    refused = rejection(b"not an image", "image/png")
    assert pickle.loads(pickle.dumps(refused)) == refused  # noqa: S301 - our own bytes


# --- rejections ---------------------------------------------------------------


def test_png_declared_as_jpeg_is_a_type_mismatch() -> None:
    data = encode(Image.new("RGB", (32, 32)), "PNG")

    assert rejection(data, "image/jpeg") == Rejection(
        "type_mismatch", "declared image/jpeg but the content is image/png"
    )


def test_jpeg_declared_as_png_is_a_type_mismatch() -> None:
    data = encode(Image.new("RGB", (32, 32)), "JPEG")

    assert rejection(data, "image/png") == Rejection(
        "type_mismatch", "declared image/png but the content is image/jpeg"
    )


def test_random_bytes_are_a_type_mismatch() -> None:
    data = random.Random(7).randbytes(4096)
    assert sniff_type(data) is None

    refused = rejection(data, "image/jpeg")

    assert refused.code == "type_mismatch"
    assert refused.reason == "declared image/jpeg but the content is not a recognised file type"


def test_a_known_but_unsupported_image_type_is_refused() -> None:
    data = encode(Image.new("RGB", (32, 32)), "BMP")

    assert rejection(data, "image/bmp").code == "unsupported"


def test_png_bomb_is_refused_from_its_header_quickly(png_bomb: bytes) -> None:
    started = time.perf_counter()
    refused = rejection(png_bomb, "image/png")
    elapsed = time.perf_counter() - started

    assert refused.code == "decompression_bomb"
    assert elapsed < 0.25


def test_bomb_is_refused_even_without_pillows_global_limit(
    png_bomb: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)

    started = time.perf_counter()
    refused = rejection(png_bomb, "image/png")
    elapsed = time.perf_counter() - started

    assert refused == Rejection(
        "decompression_bomb",
        "30000×30000 px (900000000 pixels) exceeds the limit of 50000000 pixels",
    )
    assert elapsed < 0.25


def test_jpeg_bomb_is_refused_from_its_header_quickly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    data = with_jpeg_dimensions(encode(Image.new("RGB", (64, 64)), "JPEG"), 30000, 30000)

    started = time.perf_counter()
    refused = rejection(data, "image/jpeg")

    assert refused.code == "decompression_bomb"
    assert time.perf_counter() - started < 0.25


def test_the_pixel_limit_is_the_callers_not_pillows() -> None:
    data = encode(Image.new("RGB", (2000, 1500)), "PNG")

    assert rejection(data, "image/png", max_pixels=2_999_999) == Rejection(
        "decompression_bomb", "2000×1500 px (3000000 pixels) exceeds the limit of 2999999 pixels"
    )
    assert isinstance(analyse(data, "image/png", max_pixels=3_000_000), ImageReport)


def test_limits_leave_pillows_global_state_alone(png_bomb: bytes) -> None:
    limit, filters = Image.MAX_IMAGE_PIXELS, list(warnings.filters)

    rejection(png_bomb, "image/png")

    assert limit == Image.MAX_IMAGE_PIXELS
    assert warnings.filters == filters


def test_truncated_jpeg_is_corrupt() -> None:
    data = encode(Image.effect_noise((640, 480), 60).convert("RGB"), "JPEG", quality=90)

    refused = rejection(data[: len(data) // 2], "image/jpeg")

    assert refused.code == "corrupt"
    assert "truncated" in refused.reason


def test_damaged_png_data_is_corrupt() -> None:
    data = bytearray(encode(Image.effect_noise((200, 200), 60), "PNG"))
    start = data.index(b"IDAT") + 4
    data[start + 10 : start + 400] = bytes(390)

    refused = rejection(bytes(data), "image/png")

    assert refused.code == "corrupt"
    assert refused.reason.startswith("the PNG data does not decode")


def test_truncated_files_are_never_accepted_by_configuration(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)

    with pytest.raises(RuntimeError, match="LOAD_TRUNCATED_IMAGES"):
        analyse(encode(Image.new("RGB", (8, 8)), "PNG"), "image/png")


# --- non-image files ----------------------------------------------------------


def test_analyse_file_reports_a_matching_pdf() -> None:
    data = b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n%%EOF\n"

    assert analyse_file(data, declared_type="application/pdf") == FileReport(
        size=len(data), sha256=hashlib.sha256(data).hexdigest(), detected_type="application/pdf"
    )


def test_analyse_file_refuses_an_executable_declared_as_pdf() -> None:
    data = b"MZ\x90\x00\x03" + bytes(200)

    assert analyse_file(data, declared_type="application/pdf") == Rejection(
        "type_mismatch",
        "declared application/pdf but the content is application/vnd.microsoft.portable-executable",
    )


# --- sniffing -----------------------------------------------------------------


def ftyp(major: bytes, *compatible: bytes) -> bytes:
    body = major + b"\x00\x00\x02\x00" + b"".join(compatible)
    return struct.pack(">I", 8 + len(body)) + b"ftyp" + body + b"\x00\x00\x00\x08free"


def ebml(doctype: bytes) -> bytes:
    children = (
        b"\x42\x86\x81\x01"  # EBMLVersion 1
        + b"\x42\xf7\x81\x01"  # EBMLReadVersion 1
        + b"\x42\xf2\x81\x04"  # EBMLMaxIDLength 4
        + b"\x42\xf3\x81\x08"  # EBMLMaxSizeLength 8
        + b"\x42\x82"
        + bytes([0x80 | len(doctype)])
        + doctype
        + b"\x42\x87\x81\x04"  # DocTypeVersion 4
    )
    return b"\x1a\x45\xdf\xa3" + bytes([0x80 | len(children)]) + children + b"\x18\x53\x80\x67"


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        (encode(Image.new("RGB", (8, 8)), "JPEG"), "image/jpeg"),
        (encode(Image.new("RGB", (8, 8)), "PNG"), "image/png"),
        (encode(Image.new("RGB", (8, 8)), "GIF"), "image/gif"),
        (b"GIF87a\x08\x00\x08\x00", "image/gif"),
        (encode(Image.new("RGB", (8, 8)), "WEBP"), "image/webp"),
        (b"RIFF\x24\x00\x00\x00AVI LIST", "video/x-msvideo"),
        (b"%PDF-1.7\n", "application/pdf"),
        (b"PK\x03\x04\x14\x00\x00\x00", "application/zip"),
        (b"PK\x05\x06" + bytes(18), "application/zip"),
        (ftyp(b"isom", b"isom", b"iso2", b"avc1", b"mp41"), "video/mp4"),
        (ftyp(b"mp42", b"mp42", b"isom"), "video/mp4"),
        (ftyp(b"XAVC", b"XAVC", b"mp42"), "video/mp4"),  # unknown major, known compatible
        (ftyp(b"qt  ", b"qt  "), "video/quicktime"),
        (b"\x00\x00\x00\x08wide\x00\x00\x10\x00mdat", "video/quicktime"),
        (ftyp(b"heic", b"mif1", b"heic"), "image/heic"),
        (ftyp(b"avif", b"avif", b"mif1"), "image/avif"),
        (ebml(b"webm"), "video/webm"),
        (ebml(b"matroska"), "video/x-matroska"),
        (b"MZ\x90\x00", "application/vnd.microsoft.portable-executable"),
        (b"\x7fELF\x02\x01\x01", "application/x-elf"),
        (ftyp(b"zzzz", b"yyyy"), None),
        (ebml(b"other"), None),
        (b"RIFF\x24\x00\x00\x00XXXX", None),
        (b"\xff\xd8", None),
        (b"", None),
        (b"hello, world", None),
    ],
)
def test_sniff_type(head: bytes, expected: str | None) -> None:
    assert sniff_type(head) == expected


@pytest.mark.parametrize(
    ("declared", "detected", "matches"),
    [
        ("image/jpeg", "image/jpeg", True),
        ("IMAGE/JPEG; charset=binary", "image/jpeg", True),
        ("image/jpg", "image/jpeg", True),
        ("image/pjpeg", "image/jpeg", True),
        ("application/x-zip-compressed", "application/zip", True),
        (
            "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
            "application/zip",
            True,
        ),
        ("video/quicktime", "video/mp4", True),
        ("video/mp4", "video/quicktime", True),
        ("image/jpeg", "image/png", False),
        ("image/png", "image/jpeg", False),
        ("application/zip", "application/pdf", False),
        ("video/webm", "video/mp4", False),
        ("image/jpeg", None, False),
        ("", "image/jpeg", False),
    ],
)
def test_type_matches(declared: str, detected: str | None, matches: bool) -> None:
    assert type_matches(declared, detected) is matches
