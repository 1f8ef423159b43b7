"""Where an image ends, its frames and metadata, read from the container's structure.

Files are made with Pillow (every format's ordinary output) or by hand, where the
point is a structure Pillow never writes: end markers inside metadata, fill bytes,
a missing end marker, a truncated block.
"""

from __future__ import annotations

import io
import struct

import pytest
from PIL import Image, ImageCms
from PIL.PngImagePlugin import PngInfo

from services.processor.layout import Layout, LayoutError, image_layout
from tests.support import make_jpeg, make_zip, many_frame_gif, png_chunk, with_png_chunk

ZIP = make_zip(**{"payload.js": b"alert(document.cookie)" * 40})
HTML = b"<html><script>alert(document.cookie)</script></html>"


def encode(im: Image.Image, fmt: str, **params: object) -> bytes:
    out = io.BytesIO()
    im.save(out, fmt, **params)
    return out.getvalue()


def picture(size: tuple[int, int] = (96, 64)) -> Image.Image:
    return Image.linear_gradient("L").resize(size).convert("RGB")


def layout(data: bytes, image_type: str, max_frames: int | None = None) -> Layout:
    found = image_layout(data, image_type, max_frames=max_frames)
    assert found is not None
    return found


def frames_of(images: list[Image.Image], fmt: str, **params: object) -> bytes:
    return encode(images[0], fmt, save_all=True, append_images=images[1:], **params)


COLOURS = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (200, 200, 30)]
ANIMATION = [Image.new("RGB", (40, 30), colour) for colour in COLOURS]

PILLOW_FILES = {
    "baseline JPEG": (encode(picture(), "JPEG"), "image/jpeg", 1),
    "progressive JPEG": (encode(picture(), "JPEG", progressive=True), "image/jpeg", 1),
    "JPEG with restart markers": (
        encode(picture(), "JPEG", restart_marker_blocks=1),
        "image/jpeg",
        1,
    ),
    "grayscale JPEG": (encode(picture().convert("L"), "JPEG"), "image/jpeg", 1),
    "CMYK JPEG": (encode(picture().convert("CMYK"), "JPEG"), "image/jpeg", 1),
    "PNG": (encode(picture(), "PNG"), "image/png", 1),
    "palette PNG": (encode(picture().convert("P"), "PNG"), "image/png", 1),
    "APNG": (frames_of(ANIMATION, "PNG"), "image/png", 4),
    "APNG with a default image": (
        frames_of(ANIMATION, "PNG", default_image=True),
        "image/png",
        4,
    ),
    "GIF": (encode(picture().convert("P"), "GIF"), "image/gif", 1),
    "animated GIF": (frames_of(ANIMATION, "GIF", duration=50, loop=0), "image/gif", 4),
    "lossy WebP": (encode(picture(), "WEBP"), "image/webp", 1),
    "lossless WebP": (encode(picture(), "WEBP", lossless=True), "image/webp", 1),
    "WebP with alpha": (encode(picture().convert("RGBA"), "WEBP"), "image/webp", 1),
    "animated WebP": (frames_of(ANIMATION, "WEBP", duration=50), "image/webp", 4),
}


@pytest.mark.parametrize("name", list(PILLOW_FILES))
def test_pillows_files_end_where_they_end_with_pillows_frame_count(name: str) -> None:
    data, image_type, frames = PILLOW_FILES[name]

    found = layout(data, image_type)

    assert found.end == len(data)
    assert found.complete
    assert found.frames == frames == getattr(Image.open(io.BytesIO(data)), "n_frames", 1)


@pytest.mark.parametrize("name", list(PILLOW_FILES))
@pytest.mark.parametrize(
    "tail", [ZIP, HTML, b"\x00", b"\xff\xd9"], ids=["zip", "html", "nul", "eoi"]
)
def test_appended_bytes_are_after_the_end(name: str, tail: bytes) -> None:
    data, image_type, frames = PILLOW_FILES[name]

    found = layout(data + tail, image_type)

    assert found.end == len(data)
    assert found.frames == frames


def test_a_jpeg_ends_at_its_eoi_not_at_one_inside_its_metadata() -> None:
    """An EXIF thumbnail is a whole JPEG inside APP1; a comment can hold any bytes."""
    thumbnail = make_jpeg(16, 16)
    data = make_jpeg(64, 48)
    app1 = b"\xff\xe1" + struct.pack(">H", len(thumbnail) + 8) + b"Exif\0\0" + thumbnail
    comment = b"\xff\xfe" + struct.pack(">H", 6) + b"\xff\xd9\xff\xd9"
    crafted = data[:2] + app1 + comment + data[2:]
    assert crafted.find(b"\xff\xd9") < len(crafted) - 2  # a marker search would stop early

    found = layout(crafted + ZIP, "image/jpeg")

    assert found.end == len(crafted)
    assert found.ended_by == "after its EOI marker"
    assert found.metadata_bytes >= len(app1) + len(comment)


def test_a_jpeg_may_pad_markers_with_fill_bytes() -> None:
    data = make_jpeg(64, 48)
    sos = data.index(b"\xff\xda")
    padded = data[:sos] + b"\xff\xff\xff" + data[sos:-2] + b"\xff\xff\xff\xd9"

    assert layout(padded + HTML, "image/jpeg").end == len(padded)
    assert Image.open(io.BytesIO(padded)).size == (64, 48)


def test_a_png_ends_at_its_iend_not_at_one_inside_a_text_chunk() -> None:
    png = encode(picture(), "PNG")
    fake_end = png_chunk(b"IEND", b"")
    crafted = with_png_chunk(png, b"tEXt", b"Comment\0" + fake_end + HTML)

    found = layout(crafted + HTML, "image/png")

    assert found.end == len(crafted)
    assert found.ended_by == "after its IEND chunk"


def test_a_gif_ends_at_its_trailer_not_at_one_inside_a_comment() -> None:
    gif = encode(picture().convert("P"), "GIF", comment=b";;;" * 50)
    assert gif.index(b";") < len(gif) - 1

    found = layout(gif + ZIP, "image/gif")

    assert found.end == len(gif)
    assert found.ended_by == "after its trailer"


def test_a_png_without_iend_ends_where_its_chunks_stop() -> None:
    png = encode(picture(), "PNG")
    without_end = png[:-12]

    assert layout(without_end, "image/png").end == len(without_end)
    assert layout(without_end + HTML, "image/png").end == len(without_end)
    assert layout(without_end + HTML, "image/png").ended_by == "before bytes that are not a chunk"


def test_a_gif_without_trailer_ends_where_its_blocks_stop() -> None:
    gif = encode(picture().convert("P"), "GIF")[:-1]

    assert layout(gif, "image/gif").end == len(gif)
    assert layout(gif + ZIP, "image/gif").end == len(gif)  # "P" starts no block


def test_webp_ends_where_its_riff_size_says() -> None:
    webp = encode(picture(), "WEBP")
    assert struct.unpack("<I", webp[4:8])[0] + 8 == len(webp)

    assert layout(webp + ZIP, "image/webp").end == len(webp)


@pytest.mark.parametrize(
    ("name", "cut", "message"),
    [
        ("baseline JPEG", 0.5, "the JPEG is truncated"),
        ("baseline JPEG", -2, "before its EOI marker"),
        ("PNG", 0.5, "the PNG is truncated: its IDAT chunk"),
        ("animated GIF", 0.5, "the GIF is truncated"),
        ("lossy WebP", -10, "the WebP is truncated"),
    ],
)
def test_truncated_structures_are_errors(name: str, cut: float, message: str) -> None:
    data, image_type, _ = PILLOW_FILES[name]
    keep = int(len(data) * cut) if isinstance(cut, float) else len(data) + int(cut)

    with pytest.raises(LayoutError, match=message):
        image_layout(data[:keep], image_type)


def test_an_invalid_jpeg_marker_is_an_error() -> None:
    data = make_jpeg(64, 48)
    sos = data.index(b"\xff\xda")

    with pytest.raises(LayoutError, match="invalid marker 0xFF4B"):
        image_layout(data[:sos] + b"\xff\x4b" + data[sos:], "image/jpeg")


def test_frames_of_a_hand_made_gif_are_counted() -> None:
    assert layout(many_frame_gif(10_000), "image/gif").frames == 10_000


def test_counting_stops_just_past_the_frame_limit() -> None:
    data = many_frame_gif(10_000)

    found = layout(data, "image/gif", max_frames=1000)

    assert not found.complete
    assert found.frames == 1001
    assert found.end < len(data) // 9  # the rest was never walked


def test_a_gif_at_the_frame_limit_is_complete() -> None:
    found = layout(many_frame_gif(1000), "image/gif", max_frames=1000)

    assert found.complete
    assert found.frames == 1000


def test_an_apng_that_declares_more_frames_than_the_limit_stops_at_actl() -> None:
    data = bytearray(PILLOW_FILES["APNG"][0])
    actl = data.index(b"acTL")
    data[actl + 4 : actl + 8] = struct.pack(">I", 5_000_000)

    found = layout(bytes(data), "image/png", max_frames=1000)

    assert not found.complete
    assert found.frames == 5_000_000


@pytest.mark.parametrize("image_type", ["image/png", "image/gif", "image/webp"])
def test_animated_frames_over_the_limit_stop_the_walk(image_type: str) -> None:
    name = {"image/png": "APNG", "image/gif": "animated GIF", "image/webp": "animated WebP"}
    data = PILLOW_FILES[name[image_type]][0]

    assert not layout(data, image_type, max_frames=3).complete
    assert layout(data, image_type, max_frames=4).complete


def test_png_metadata_counts_every_chunk_but_pixels_and_frames() -> None:
    info = PngInfo()
    info.add_text("Comment", "x" * 1000)
    info.add_text("Title", "y" * 500, zip=True)
    info.add_itxt("XML:com.adobe.xmp", "<x:xmpmeta/>" * 20)
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    png = encode(picture(), "PNG", pnginfo=info, icc_profile=icc)
    private = png_chunk(b"prVt", b"z" * 300)  # unknown chunks are metadata too
    png = with_png_chunk(png, b"prVt", b"z" * 300)

    found = layout(png, "image/png")

    pixels_and_frame = {b"IHDR", b"IDAT", b"IEND"}
    expected, pos = 0, 8
    while pos < len(png):
        length, kind = struct.unpack(">I4s", png[pos : pos + 8])
        if kind not in pixels_and_frame:
            expected += 12 + length
        pos += 12 + length
    assert found.metadata_bytes == expected
    assert found.metadata_bytes > 1000 + len(private) + 12 + 240


def test_apng_frame_chunks_are_not_metadata() -> None:
    assert layout(PILLOW_FILES["APNG"][0], "image/png").metadata_bytes == 0


def test_jpeg_metadata_counts_app_and_comment_segments() -> None:
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    plain = encode(picture(), "JPEG")
    rich = encode(picture(), "JPEG", comment=b"c" * 2000, icc_profile=icc)

    assert layout(plain, "image/jpeg").metadata_bytes == 18  # the JFIF APP0 segment
    assert layout(rich, "image/jpeg").metadata_bytes == 18 + (4 + 2000) + (4 + 14 + len(icc))


def test_gif_metadata_counts_extensions_but_graphic_control() -> None:
    plain = many_frame_gif(3)
    commented = encode(picture().convert("P"), "GIF", comment=b"c" * 600)

    assert layout(plain, "image/gif").metadata_bytes == 19  # the NETSCAPE loop block
    # A comment of 600 bytes: introducer, label, sub-blocks of 255 + 255 + 90, terminator.
    assert layout(commented, "image/gif").metadata_bytes == 2 + (1 + 255) * 2 + (1 + 90) + 1


def test_webp_metadata_counts_exif_xmp_and_icc_chunks() -> None:
    exif = Image.Exif()
    exif[0x010F] = "Clearance Camera Co" * 10
    webp = encode(picture(), "WEBP", exif=exif.tobytes(), xmp=b"<x:xmpmeta/>" * 30)

    found = layout(webp, "image/webp")

    assert found.metadata_bytes >= len(exif.tobytes()) + 360
    assert found.end == len(webp)


def test_types_without_a_walk_have_no_layout() -> None:
    assert image_layout(b"\0\0\0\x18ftypheic", "image/heic") is None
