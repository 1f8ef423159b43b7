"""Units of the media processing: sniffing brands, the ranged reader, the job pool,
limits on real decoding of files made here (in memory, no storage)."""

from __future__ import annotations

import asyncio
import io
import os
import struct
import time
from pathlib import Path

import pytest

from services.processor.document import describe_pdf
from services.processor.media import MediaLimits, clean_text
from services.processor.pool import JobCrashed, JobPool, JobTimeout
from services.processor.ranged import RangedReader, ReadBudgetExceeded, StorageReadError
from services.processor.video import describe_video, matroska_declared_size
from services.processor.worker import job_threads
from shared.detected import Detected
from shared.sniff import sniff_type, type_matches
from tests.support import eventually, make_video, pdf_file

LIMITS = MediaLimits(sizes=(1024, 256), max_pixels=50_000_000, read_bytes=64 << 20)


def ftyp(major: bytes, *compatible: bytes) -> bytes:
    body = major + b"\x00\x00\x00\x00" + b"".join(compatible)
    return struct.pack(">I", 8 + len(body)) + b"ftyp" + body


# -- sniffing ISO-BMFF brands -----------------------------------------------------


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        (ftyp(b"heic", b"mif1", b"heic"), "image/heic"),
        (ftyp(b"mif1", b"mif1", b"heic"), "image/heic"),  # structural major brand
        (ftyp(b"mif1", b"miaf", b"avif"), "image/avif"),
        (ftyp(b"avif", b"avif", b"mif1", b"miaf"), "image/avif"),
        (ftyp(b"avis", b"avis", b"msf1"), "image/avif"),
        (ftyp(b"mif1", b"mif1", b"miaf"), "image/heif"),
        (ftyp(b"msf1", b"msf1"), "image/heif"),
        (ftyp(b"isom", b"isom", b"mif1"), "video/mp4"),  # the major brand decides
        (ftyp(b"zzzz", b"yyyy"), None),
    ],
)
def test_iso_bmff_brands(head: bytes, expected: str | None) -> None:
    assert sniff_type(head) == expected


def test_heic_and_heif_stand_for_each_other_but_not_for_avif() -> None:
    assert type_matches("image/heif", "image/heic")
    assert type_matches("image/heic", "image/heif")
    assert not type_matches("image/heic", "image/avif")
    assert not type_matches("image/avif", "image/heif")


# -- the ranged reader ---------------------------------------------------------------


class Storage:
    """Bytes behind a fetch function that records every request."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.requests: list[tuple[int, int]] = []

    def __call__(self, first: int, last: int) -> bytes:
        assert 0 <= first <= last < len(self.data), (first, last)
        self.requests.append((first, last))
        return self.data[first : last + 1]


def test_reads_and_seeks_return_the_right_bytes_across_blocks() -> None:
    data = os.urandom(10_000)
    storage = Storage(data)
    reader = RangedReader(storage, len(data), budget=10_000, block=1000)
    assert reader.read(10) == data[:10]
    reader.seek(995)
    assert reader.read(10) == data[995:1005]  # spans two blocks
    assert reader.seek(-5, io.SEEK_END) == 9995
    assert reader.read(100) == data[-5:]
    assert reader.read(1) == b""  # end of file
    reader.seek(2500)
    buf = bytearray(700)
    assert reader.readinto(buf) == 700
    assert bytes(buf) == data[2500:3200]
    assert reader.tell() == 3200


def test_re_reads_come_from_the_cache_and_every_fetched_byte_is_counted() -> None:
    data = os.urandom(8_000)
    storage = Storage(data)
    reader = RangedReader(storage, len(data), budget=8_000, block=1000)
    for _ in range(3):
        reader.seek(7_500)
        reader.read(200)
        reader.seek(0)
        reader.read(200)
    assert storage.requests == [(7000, 7999), (0, 999)]
    assert reader.bytes_fetched == 2000
    assert reader.requests == 2


def test_sequential_reading_grows_the_read_ahead_and_a_jump_resets_it() -> None:
    data = os.urandom(64_000)
    storage = Storage(data)
    reader = RangedReader(storage, len(data), budget=64_000, block=1000, max_readahead_blocks=8)
    while reader.read(500):
        pass
    sizes = [last - first + 1 for first, last in storage.requests]
    assert sizes[:5] == [1000, 2000, 4000, 8000, 8000]
    assert sum(sizes) == 64_000
    storage.requests.clear()
    reader2 = RangedReader(storage, len(data), budget=64_000, block=1000)
    reader2.seek(30_000)
    reader2.read(10)
    assert storage.requests == [(30_000, 30_999)]  # a jump fetches only what is needed


def test_the_budget_stops_reading_before_the_bytes_are_fetched() -> None:
    data = os.urandom(10_000)
    storage = Storage(data)
    reader = RangedReader(storage, len(data), budget=2_500, block=1000)
    reader.read(2000)
    with pytest.raises(ReadBudgetExceeded, match="more than 2500 bytes"):
        reader.read(2000)
    assert reader.bytes_fetched == 2000
    assert storage.requests == [(0, 1999)]  # one request for what one read needs
    # C callers (PDFium) see a failed short read; the cause is kept.
    reader.seek(5000)
    assert reader.readinto(bytearray(1000)) == 0
    assert isinstance(reader.failure, ReadBudgetExceeded)


def test_a_short_answer_from_storage_is_an_error_not_data() -> None:
    reader = RangedReader(lambda first, last: b"abc", 10_000, budget=10_000, block=1000)
    with pytest.raises(StorageReadError, match="3 bytes for a 1000-byte range"):
        reader.read(10)


def test_storage_errors_keep_their_meaning_across_the_process_boundary() -> None:
    import pickle

    pickled = pickle.dumps(StorageReadError("gone", changed=True))
    error = pickle.loads(pickled)  # noqa: S301 - our own bytes
    assert (str(error), error.changed) == ("gone", True)
    budget = pickle.loads(pickle.dumps(ReadBudgetExceeded(10, 20)))  # noqa: S301
    assert budget.budget == 10


# -- limits on real decoding (in memory) -------------------------------------------


def reader_over(data: bytes, budget: int = 64 << 20) -> RangedReader:
    return RangedReader(Storage(data), len(data), budget=budget)


def test_a_video_is_described_and_its_poster_is_upright() -> None:
    data = make_video(rotation=-90, audio=True)
    outcome = describe_video(reader_over(data), "video/mp4", LIMITS)
    assert not hasattr(outcome, "code"), outcome
    facts, picture = outcome  # type: ignore[misc]
    assert (facts.width, facts.height, facts.rotation, facts.audio_codec) == (240, 320, 90, "aac")
    assert picture.size == (240, 320)
    assert picture.getpixel((235, 160))[0] > 200  # the stored top (red) went right


def test_the_read_budget_refuses_a_video_that_needs_more() -> None:
    data = make_video(width=640, height=480, seconds=2, noise=True)
    outcome = describe_video(reader_over(data, budget=100_000), "video/mp4", LIMITS)
    assert outcome.code == "over_limit"  # type: ignore[union-attr]
    assert "100000 bytes" in outcome.reason  # type: ignore[union-attr]


def test_the_pixel_limit_applies_before_decoding() -> None:
    data = make_video(width=320, height=240)
    small = MediaLimits(sizes=(256,), max_pixels=320 * 240 - 1, read_bytes=1 << 20)
    outcome = describe_video(reader_over(data), "video/mp4", small)
    assert outcome.code == "decompression_bomb"  # type: ignore[union-attr]
    assert "320×240" in outcome.reason  # type: ignore[union-attr]


def test_the_frame_limit_bounds_the_search_for_a_key_frame() -> None:
    data = make_video(seconds=2)
    one = MediaLimits(sizes=(256,), max_pixels=50_000_000, read_bytes=1 << 20, max_frames=0)
    outcome = describe_video(reader_over(data), "video/mp4", one)
    assert outcome.code == "over_limit"  # type: ignore[union-attr]


def test_the_duration_limit_refuses_long_videos() -> None:
    data = make_video(seconds=2)
    short = MediaLimits(sizes=(256,), max_pixels=50_000_000, read_bytes=1 << 20, max_seconds=1)
    outcome = describe_video(reader_over(data), "video/mp4", short)
    assert outcome.code == "over_limit"  # type: ignore[union-attr]
    assert "2 s" in outcome.reason  # type: ignore[union-attr]


def test_matroska_declared_size_is_read_from_the_tracks() -> None:
    video = b"\xb0\x83" + (100_000).to_bytes(3, "big") + b"\xba\x83" + (90_000).to_bytes(3, "big")
    entry = (
        b"\xae" + bytes([0x80 | (len(video) + 2)]) + b"\xe0" + bytes([0x80 | len(video)]) + video
    )
    tracks = b"\x16\x54\xae\x6b" + bytes([0x80 | len(entry)]) + entry
    segment = b"\x18\x53\x80\x67" + b"\x01\xff\xff\xff\xff\xff\xff\xff" + tracks  # unknown size
    header = b"\x1a\x45\xdf\xa3\x84\x42\x82\x81\x77"  # EBML header (a stand-in child)
    assert matroska_declared_size(header + segment) == (100_000, 90_000)
    assert matroska_declared_size(header) is None
    assert matroska_declared_size(b"\x1a\x45\xdf") is None  # truncated: nothing, no error


def test_pdf_page_limit_and_encryption_are_decided_before_rendering() -> None:
    data = pdf_file([(595, 842)] * 3)
    few = MediaLimits(sizes=(256,), max_pixels=50_000_000, read_bytes=1 << 20, max_pages=2)
    outcome = describe_pdf(reader_over(data), few)
    assert outcome.code == "over_limit"  # type: ignore[union-attr]
    assert "3 pages" in outcome.reason  # type: ignore[union-attr]
    locked = describe_pdf(reader_over(pdf_file(user_password="pw")), LIMITS)
    assert locked.code == "encrypted"  # type: ignore[union-attr]


def test_pdf_read_budget_is_reported_as_such() -> None:
    data = pdf_file()
    outcome = describe_pdf(RangedReader(Storage(data), len(data), budget=100), LIMITS)
    assert outcome.code == "over_limit", outcome  # type: ignore[union-attr]
    assert "100 bytes" in outcome.reason  # type: ignore[union-attr]


def test_text_from_files_is_printable_and_capped() -> None:
    assert clean_text("a\x00b\x07  c\n") == "a b c"
    assert clean_text("x" * 500) == "x" * 200
    assert clean_text("\x00\x01") is None
    assert clean_text(42) is None


def test_detected_keeps_unknown_keys_and_types_the_known_ones() -> None:
    record = Detected.model_validate(
        {
            "type": "application/pdf",
            "document": {"pages": 2, "page_width": 1, "page_height": 2, "encrypted": False},
            "future": 1,
        }
    )
    assert record.document is not None
    assert record.document.pages == 2
    assert record.model_dump()["future"] == 1


# -- the job pool ------------------------------------------------------------------


def sleep_job(seconds: float) -> str:
    time.sleep(seconds)
    return "slept"


def crash_job() -> None:
    os.abort()


def failing_job() -> None:
    raise ValueError("bad input")


def pid_job() -> int:
    return os.getpid()


async def test_a_job_over_its_limit_is_killed_and_the_slot_serves_the_next() -> None:
    with JobPool(1) as pool:
        first = await pool.run(pid_job, timeout=30)
        started = time.perf_counter()
        with pytest.raises(JobTimeout, match=r"longer than 0\.5 s"):
            await pool.run(sleep_job, 60, timeout=0.5)
        assert time.perf_counter() - started < 10
        assert await pool.run(sleep_job, 0, timeout=30) == "slept"
        assert await pool.run(pid_job, timeout=30) != first  # a fresh process


async def test_a_crash_is_reported_with_its_signal_and_errors_come_back_as_they_are() -> None:
    with JobPool(1) as pool:
        with pytest.raises(JobCrashed) as crashed:
            await pool.run(crash_job, timeout=30)
        assert crashed.value.by_crash_signal
        assert "SIGABRT" in str(crashed.value)
        with pytest.raises(ValueError, match="bad input"):
            await pool.run(failing_job, timeout=30)
        assert await pool.run(sleep_job, 0, timeout=30) == "slept"


def wait_for_file_job(path: str) -> str:
    while not os.path.exists(path):
        time.sleep(0.005)
    return "released"


async def test_a_job_on_an_idle_pool_gets_two_threads_and_one_beside_another_job(
    tmp_path: Path,
) -> None:
    release = tmp_path / "release"
    with JobPool(2) as pool:
        assert pool.running == 0
        assert job_threads(None, pool.running, cpus=2) == 2
        held = asyncio.ensure_future(pool.run(wait_for_file_job, str(release), timeout=30))

        async def started() -> bool:
            return pool.running == 1

        await eventually(started, timeout=10, what="the job to start")
        # Another image job now shares the cores with it.
        assert job_threads(None, pool.running, cpus=2) == 1
        release.touch()
        assert await held == "released"
        assert pool.running == 0
    # A configured number is used whatever runs; one core never gets two threads.
    assert job_threads(3, 1, cpus=2) == job_threads(3, 0, cpus=2) == 3
    assert job_threads(None, 0, cpus=1) == 1


def test_the_openapi_document_describes_video_and_document_facts() -> None:
    from services.gateway.openapi import document

    schemas = document()["components"]["schemas"]
    assert {"Detected", "DetectedVideo", "DetectedDocument"} <= set(schemas)
    assert "duration" in schemas["DetectedVideo"]["properties"]
    assert "pages" in schemas["DetectedDocument"]["properties"]


def test_the_cli_prints_video_and_document_facts() -> None:
    from clients.cli.upload import format_record

    base = {"id": "u1", "status": "ready", "filename": "f", "content_type": "video/mp4"}
    video = {
        "width": 240,
        "height": 320,
        "duration": 2.0,
        "video_codec": "h264",
        "audio_codec": "aac",
        "rotation": 90,
    }
    text = format_record({**base, "detected": {"type": "video/mp4", "video": video}})
    assert "video: 240×320  2.0 s  h264+aac  rotation 90" in text
    document = {"pages": 2, "page_width": 595.0, "page_height": 842.0, "title": "Q3"}
    text = format_record({**base, "detected": {"type": "application/pdf", "document": document}})
    assert "document: 2 pages  595.0×842.0 pt  'Q3'" in text
