"""Videos, PDFs, HEIC and AVIF end to end: real storage, broker, clamd and decoders.

Every file is made by the test (PyAV encodes synthetic frames, PDFs are written
by hand, HEIC/AVIF by pillow-heif/Pillow). Frames and pages are top half red,
bottom half blue, so a poster shows whether its orientation is right.
"""

from __future__ import annotations

import io
import struct
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aiohttp import ClientSession
from PIL import Image
from prometheus_client import REGISTRY

from shared.settings import Settings
from tests.support import Uploads, make_jpeg, make_video, pdf_file, pipeline_workers

pytestmark = pytest.mark.integration

RED, BLUE = (255, 0, 0), (0, 0, 255)
# Short enough that the PDF bomb below costs the suite little, long enough for
# every honest file here on a slow, shared machine.
JOB_SECONDS = 6.0


@pytest.fixture(scope="module")
async def workers(settings: Settings, gateway: str) -> AsyncIterator[None]:
    """Scanner and processor in this process, the processor with a short job limit."""
    limited = settings.model_copy(update={"processor_job_seconds": JOB_SECONDS})
    async with pipeline_workers(limited, "test-media-workers"):
        yield


@pytest.fixture
def uploads(http: ClientSession, gateway: str, owner_headers: dict[str, str]) -> Uploads:
    return Uploads(http, gateway, owner_headers)


async def upload(
    uploads: Uploads, data: bytes, content_type: str, profile: str = "media"
) -> dict[str, Any]:
    created = await uploads.create(data, content_type, filename="f", profile=profile)
    await uploads.put(created, data)
    await uploads.complete(created["id"])
    return await uploads.wait_final(created["id"])


async def thumbnails(http: ClientSession, record: dict[str, Any]) -> dict[int, Image.Image]:
    found = {}
    for thumb in record["thumbnails"]:
        async with http.get(thumb["url"]) as resp:
            assert resp.status == 200
            image = Image.open(io.BytesIO(await resp.read()))
            image.load()
        assert image.format == "WEBP"
        found[thumb["size"]] = image.convert("RGB")
    assert set(found) == {1024, 256}
    return found


def near(pixel: tuple[int, ...], colour: tuple[int, int, int]) -> bool:
    return all(abs(a - b) < 60 for a, b in zip(pixel, colour, strict=True))


def read_bytes(kind: str) -> float:
    """Bytes all video/PDF jobs in this process have read from storage so far."""
    return REGISTRY.get_sample_value("clearance_processing_read_bytes_sum", {"kind": kind}) or 0.0


# -- videos ---------------------------------------------------------------------


async def test_an_mp4_with_its_index_at_the_end_is_described_from_a_fraction_of_it(
    uploads: Uploads, workers: None, http: ClientSession
) -> None:
    data = make_video(width=640, height=480, seconds=4, noise=True)  # moov at the end
    assert data.rfind(b"moov") > len(data) // 2
    before = read_bytes("video")
    record = await upload(uploads, data, "video/mp4")
    assert record["status"] == "ready", record
    video = record["detected"]["video"]
    assert record["detected"]["type"] == "video/mp4"
    assert (video["container"], video["video_codec"], video["width"], video["height"]) == (
        "mp4",
        "h264",
        640,
        480,
    )
    assert video["duration"] == pytest.approx(4.0, abs=0.1)
    assert video["frame_rate"] == pytest.approx(25.0)
    assert (video["has_audio"], video["audio_codec"], video["rotation"]) == (False, None, 0)
    assert video["bit_rate"] > 1_000_000
    read = read_bytes("video") - before
    assert len(data) > 5_000_000
    assert 0 < read < len(data) * 0.15, (read, len(data))
    thumbs = await thumbnails(http, record)
    assert thumbs[1024].size == (640, 480)
    assert thumbs[256].size == (256, 192)


@pytest.mark.parametrize(
    ("clip", "content_type", "expected"),
    [
        (
            # A phone held upright: stored landscape, shown turned 90° clockwise.
            {"rotation": -90, "audio": True},
            "video/mp4",
            {"container": "mp4", "width": 240, "height": 320, "rotation": 90, "has_audio": True},
        ),
        (
            {"container": "webm", "codec": "libvpx-vp9", "audio": True},
            "video/webm",
            {"container": "webm", "video_codec": "vp9", "audio_codec": "opus", "width": 320},
        ),
        (
            {"container": "matroska", "faststart": False},
            "video/x-matroska",
            {"container": "mkv", "video_codec": "h264", "has_audio": False, "audio_codec": None},
        ),
    ],
    ids=["rotated-phone-mp4", "webm-vp9-opus", "matroska-no-audio"],
)
async def test_videos_get_their_facts_and_an_upright_poster(
    uploads: Uploads,
    workers: None,
    http: ClientSession,
    clip: dict[str, Any],
    content_type: str,
    expected: dict[str, Any],
) -> None:
    record = await upload(uploads, make_video(**clip), content_type)
    assert record["status"] == "ready", record
    video = record["detected"]["video"]
    assert {key: video[key] for key in expected} == expected
    poster = (await thumbnails(http, record))[1024]
    assert poster.size == (video["width"], video["height"])
    w, h = poster.size
    if video["rotation"] == 90:
        # The stored frame's top (red) is on the right once turned clockwise.
        assert near(poster.getpixel((w - 5, h // 2)), RED)
        assert near(poster.getpixel((5, h // 2)), BLUE)
    else:
        assert near(poster.getpixel((w // 2, 5)), RED)
        assert near(poster.getpixel((w // 2, h - 5)), BLUE)


# -- PDFs -----------------------------------------------------------------------


async def test_a_two_page_pdf_gets_its_facts_and_a_first_page_preview(
    uploads: Uploads, workers: None, http: ClientSession
) -> None:
    title = "Quarterly\x07 report " + "x" * 300
    data = pdf_file([(595, 842), (842, 595)], info={"Title": title, "Author": "Ann Example"})
    record = await upload(uploads, data, "application/pdf")
    assert record["status"] == "ready", record
    document = record["detected"]["document"]
    assert document["pages"] == 2
    assert (document["page_width"], document["page_height"]) == (595, 842)
    assert document["encrypted"] is False
    assert document["author"] == "Ann Example"
    assert document["title"].startswith("Quarterly report xxx")  # control character gone
    assert len(document["title"]) == 200
    preview = (await thumbnails(http, record))[1024]
    assert preview.size == (724, 1024)
    assert near(preview.getpixel((362, 10)), RED)
    assert near(preview.getpixel((362, 1014)), BLUE)


async def test_a_pdf_encrypted_without_a_password_to_open_it_is_previewed(
    uploads: Uploads, workers: None
) -> None:
    data = pdf_file(user_password="", info={"Title": "Owner only"})
    record = await upload(uploads, data, "application/pdf")
    assert record["status"] == "ready", record
    assert record["detected"]["document"]["encrypted"] is True
    assert record["detected"]["document"]["title"] == "Owner only"


def password_pdf() -> bytes:
    import pypdfium2

    data = pdf_file(user_password="secret")
    # The file is sound: with its password it opens.
    assert len(pypdfium2.PdfDocument(data, password="secret")) == 1
    return data


# -- HEIC and AVIF ------------------------------------------------------------------


def photo(fmt: str) -> bytes:
    """A 640×480 photo, top half red, whose EXIF says 'turn 90° clockwise' (6)."""
    import pillow_heif

    pillow_heif.register_heif_opener()
    image = Image.new("RGB", (640, 480), BLUE)
    image.paste(RED, (0, 0, 640, 240))
    exif = Image.Exif()
    exif[0x0112] = 6
    exif[0x010F] = "Clearance Camera Co"
    buf = io.BytesIO()
    image.save(buf, fmt, exif=exif.tobytes(), quality=70)
    return buf.getvalue()


@pytest.mark.parametrize(
    ("fmt", "content_type"), [("HEIF", "image/heic"), ("AVIF", "image/avif")], ids=["heic", "avif"]
)
async def test_heic_and_avif_photos_get_upright_thumbnails_and_keep_their_original(
    uploads: Uploads, workers: None, http: ClientSession, fmt: str, content_type: str
) -> None:
    data = photo(fmt)
    record = await upload(uploads, data, content_type, profile="image")
    assert record["status"] == "ready", record
    detected = record["detected"]
    assert (detected["type"], detected["format"]) == (content_type, fmt)
    assert (detected["width"], detected["height"]) == (480, 640)
    assert detected["exif"]["orientation"] == 6
    assert detected["exif"]["camera_make"] == "Clearance Camera Co"
    thumbs = await thumbnails(http, record)
    assert thumbs[1024].size == (480, 640)
    assert thumbs[256].size == (192, 256)
    assert near(thumbs[1024].getpixel((470, 320)), RED)  # the top went right
    assert near(thumbs[1024].getpixel((10, 320)), BLUE)
    async with http.get(
        f"{uploads.gateway}/v1/uploads/{record['id']}/download",
        headers=uploads.headers,
        allow_redirects=False,
    ) as resp:
        location = resp.headers["Location"]
    async with http.get(location) as resp:
        assert await resp.read() == data  # the original, as uploaded


# -- hostile files ---------------------------------------------------------------


def truncated_mp4() -> bytes:
    data = make_video(seconds=2)  # index at the end: cut, it is gone
    return data[: len(data) // 2]


def huge_declared_webm() -> bytes:
    """A WebM whose track declares 100000×100000 px over a small VP9 stream."""
    import av

    small = io.BytesIO(make_video(container="webm", codec="libvpx-vp9", seconds=0.4))
    out_buf = io.BytesIO()
    with av.open(small) as source, av.open(out_buf, "w", format="webm") as out:
        video = source.streams.video[0]
        copy = out.add_stream_from_template(video)
        copy.codec_context.width = copy.codec_context.height = 100_000
        for packet in source.demux(video):
            if packet.dts is not None:
                packet.stream = copy
                out.mux(packet)
    return out_buf.getvalue()


def xobject_bomb_pdf() -> bytes:
    """Form XObjects nested 9 deep, each drawing the next 10 times: 10^9 draws."""
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] /Contents 4 0 R"
        b" /Resources << /XObject << /X 5 0 R >> >> >>",
        b"<< /Length 5 >>\nstream\n/X Do\nendstream",
    ]
    depth = 9
    for level in range(depth):
        if level < depth - 1:
            body = b"q /X Do Q " * 10
            resources = b" /Resources << /XObject << /X %d 0 R >> >>" % (6 + level)
        else:
            body, resources = b"1 0 0 rg 10 10 50 50 re f", b""
        objects.append(
            b"<< /Type /XObject /Subtype /Form /BBox [0 0 595 842]%s /Length %d >>\nstream\n"
            % (resources, len(body))
            + body
            + b"\nendstream"
        )
    out = bytearray(b"%PDF-1.7\n")
    offsets = []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1,
        xref,
    )
    return bytes(out)


def lying_heic() -> bytes:
    """A HEIC whose header (`ispe`) claims 64×48 px over 640×480 of coded pixels."""
    data = photo("HEIF")
    at = data.index(b"ispe")
    return data[: at + 8] + struct.pack(">II", 64, 48) + data[at + 16 :]


def huge_heic() -> bytes:
    """A HEIC whose header claims 60000×60000 px (3.6 gigapixels)."""
    data = photo("HEIF")
    at = data.index(b"ispe")
    return data[: at + 8] + struct.pack(">II", 60_000, 60_000) + data[at + 16 :]


@pytest.mark.parametrize(
    ("make", "content_type", "code", "words"),
    [
        (truncated_mp4, "video/mp4", "corrupt", "moov atom not found"),
        (huge_declared_webm, "video/webm", "decompression_bomb", "100000×100000"),
        (xobject_bomb_pdf, "application/pdf", "over_limit", "longer than"),
        (password_pdf, "application/pdf", "encrypted", "password"),
        (lambda: b"%PDF-1.4\n" + bytes(range(256)) * 8, "application/pdf", "corrupt", "PDF"),
        (lying_heic, "image/heic", "corrupt", "exceeds"),
        (huge_heic, "image/heic", "decompression_bomb", "pixels"),
    ],
    ids=[
        "truncated-mp4",
        "100000px-webm",
        "pdf-xobject-bomb",
        "password-pdf",
        "corrupt-pdf",
        "lying-heic",
        "huge-heic",
    ],
)
async def test_hostile_media_is_rejected_with_its_reason_and_the_worker_carries_on(
    uploads: Uploads,
    workers: None,
    make: Callable[[], bytes],
    content_type: str,
    code: str,
    words: str,
) -> None:
    record = await upload(uploads, make(), content_type)
    assert record["status"] == "rejected", record
    assert record["timeline"][-1]["detail"]["code"] == code, record
    assert words in record["reason"], record["reason"]
    # The same pool serves the next file at once (a killed process was replaced).
    after = await upload(uploads, make_jpeg(), "image/jpeg", profile="image")
    assert after["status"] == "ready", after
