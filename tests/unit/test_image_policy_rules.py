"""A profile's image rules: frames, metadata and trailing data, applied before decoding."""

from __future__ import annotations

import hashlib
import io
import time

import pytest
from PIL import Image

from services.processor.imaging import ImagePolicy, ImageReport, Rejection, analyse_image
from services.processor.profiles import image_policy, profile_of
from shared.keys import PROFILE_METADATA
from shared.settings import MiB, Settings, UploadPolicy, default_profiles
from tests.support import make_jpeg, make_png, make_zip, many_frame_gif, with_png_chunk

SIZES = (1024, 256)
LIMIT = 50_000_000
IMAGE = image_policy(default_profiles()["image"])
MEDIA = image_policy(default_profiles()["media"])
ZIP = make_zip(**{"payload.html": b"<script>alert(1)</script>" * 100})
HTML = b"<html><script>alert(document.cookie)</script></html>"


def analyse(data: bytes, declared: str, policy: ImagePolicy) -> ImageReport | Rejection:
    return analyse_image(data, declared_type=declared, sizes=SIZES, max_pixels=LIMIT, policy=policy)


def refused(data: bytes, declared: str, policy: ImagePolicy) -> Rejection:
    result = analyse(data, declared, policy)
    assert isinstance(result, Rejection), result
    return result


def accepted(data: bytes, declared: str, policy: ImagePolicy) -> ImageReport:
    result = analyse(data, declared, policy)
    assert isinstance(result, ImageReport), result
    return result


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_the_default_profiles_rules() -> None:
    assert image_policy(default_profiles()["image"]) == ImagePolicy(
        max_frames=1000, max_metadata_bytes=MiB, trailing_data="strip"
    )
    assert MEDIA.trailing_data == "keep"
    assert UploadPolicy(content_types=frozenset({"image/png"}), max_size=10).trailing_data == (
        "strip"
    )


# --- frames -----------------------------------------------------------------------


def test_a_gif_over_the_frame_limit_is_refused() -> None:
    rejection = refused(many_frame_gif(1001), "image/gif", IMAGE)

    assert rejection == Rejection(
        "too_many_frames",
        "the GIF has more than 1000 frames, the limit (counted from its structure, none decoded)",
    )


def test_a_gif_at_the_frame_limit_is_described() -> None:
    report = accepted(many_frame_gif(1000), "image/gif", IMAGE)

    assert report.frames == 1000
    assert (report.width, report.height) == (1, 1)


def test_a_huge_frame_count_is_refused_without_walking_it_all() -> None:
    data = many_frame_gif(100_000)  # Pillow's own count seeks through all: ~1 s here

    started = time.perf_counter()
    rejection = refused(data, "image/gif", IMAGE)

    assert rejection.code == "too_many_frames"
    assert time.perf_counter() - started < 0.25


def test_no_frame_limit_counts_every_frame() -> None:
    report = accepted(many_frame_gif(5000), "image/gif", ImagePolicy())

    assert report.frames == 5000


# --- metadata ---------------------------------------------------------------------


def test_a_png_with_too_much_text_is_refused() -> None:
    data = with_png_chunk(make_png(), b"tEXt", b"Comment\0" + b"x" * (2 * MiB))

    rejection = refused(data, "image/png", IMAGE)

    assert rejection.code == "metadata_too_large"
    assert rejection.reason == (
        f"the PNG holds {2 * MiB + 20} bytes of metadata (text, EXIF, XMP, ICC profiles, "
        f"comments and other non-image data); the limit is {MiB} bytes"
    )


def test_metadata_under_the_limit_is_measured_and_kept() -> None:
    data = with_png_chunk(make_png(), b"tEXt", b"Comment\0" + b"x" * 1000)

    report = accepted(data, "image/png", IMAGE)

    assert report.metadata_bytes == 12 + 8 + 1000
    assert report.served_size == len(data)


def test_many_jpeg_comments_add_up() -> None:
    jpeg = make_jpeg(64, 48)
    comment = b"\xff\xfe\xff\xff" + b"c" * 65533
    data = jpeg[:2] + comment * 20 + jpeg[2:]  # 20 × 64 KiB: each segment is at its maximum

    assert refused(data, "image/jpeg", IMAGE).code == "metadata_too_large"
    assert accepted(data, "image/jpeg", MEDIA).metadata_bytes >= 20 * len(comment)


# --- trailing data ----------------------------------------------------------------


def test_a_jpeg_with_a_zip_appended_is_served_without_it() -> None:
    jpeg = make_jpeg()
    upload = jpeg + ZIP

    report = accepted(upload, "image/jpeg", IMAGE)

    assert report.served_size == len(jpeg)
    assert report.served_sha256 == sha256(jpeg)
    assert report.sha256 == sha256(upload)
    assert report.trailing_bytes == report.trailing_bytes_removed == len(ZIP)


def test_a_png_with_html_appended_is_served_without_it() -> None:
    png = make_png()

    report = accepted(png + HTML, "image/png", IMAGE)

    assert (report.served_size, report.served_sha256) == (len(png), sha256(png))
    assert report.trailing_bytes_removed == len(HTML)


def test_a_png_without_iend_is_served_up_to_its_last_chunk() -> None:
    png = make_png()[:-12]

    report = accepted(png + HTML, "image/png", IMAGE)

    assert report.served_size == len(png)
    assert (report.width, report.height) == (320, 240)


def test_keep_serves_trailing_data_and_says_how_much_there_is() -> None:
    jpeg = make_jpeg()

    report = accepted(jpeg + ZIP, "image/jpeg", MEDIA)

    assert report.served_size == len(jpeg) + len(ZIP)
    assert report.served_sha256 == report.sha256 == sha256(jpeg + ZIP)
    assert (report.trailing_bytes, report.trailing_bytes_removed) == (len(ZIP), 0)


def test_reject_refuses_trailing_data_and_says_where_the_image_ends() -> None:
    jpeg = make_jpeg()
    strict = ImagePolicy(trailing_data="reject")

    rejection = refused(jpeg + ZIP, "image/jpeg", strict)

    assert rejection == Rejection(
        "trailing_data",
        f"{len(ZIP)} bytes follow the end of the JPEG (byte {len(jpeg)}, after its EOI "
        "marker); this upload profile refuses data after the image",
    )
    assert accepted(jpeg, "image/jpeg", strict).trailing_bytes == 0


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "GIF", "WEBP"])
def test_a_file_without_trailing_data_is_served_whole(fmt: str) -> None:
    image = Image.linear_gradient("L").resize((200, 100))
    out = io.BytesIO()
    image.convert("P" if fmt == "GIF" else "RGB").save(out, fmt)
    data = out.getvalue()

    report = accepted(data, f"image/{fmt.lower()}", IMAGE)

    assert (report.served_size, report.trailing_bytes, report.trailing_bytes_removed) == (
        len(data),
        0,
        0,
    )
    assert report.served_sha256 == report.sha256 == sha256(data)


def test_a_truncated_structure_is_corrupt_whatever_pillow_makes_of_it() -> None:
    # A text chunk after the pixels, cut short: the pixels decode, the file is not whole.
    png = make_png()
    cut = png[:-12] + b"\0\0\x10\0tEXtComment\0only a little"

    rejection = refused(cut, "image/png", MEDIA)

    assert rejection.code == "corrupt"
    assert rejection.reason.startswith("the PNG is truncated: its tEXt chunk")


# --- which profile applies ---------------------------------------------------------


def test_the_profile_comes_from_the_objects_metadata() -> None:
    settings = Settings(_env_file=None)

    media = profile_of(settings, {PROFILE_METADATA: "media"})
    missing = profile_of(settings, {})
    unknown = profile_of(settings, {PROFILE_METADATA: "gone"})

    assert (media.name, media.recorded) == ("media", True)
    assert media.policy.trailing_data == "keep"
    assert (missing.name, missing.recorded) == ("image", False)
    assert (unknown.name, unknown.recorded) == ("image", False)
