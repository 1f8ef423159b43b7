"""Video posters and PDF previews: ours against the command-line tools, in one run.

Run with the local stack up (`clearance stack up --infra-only`):

    .venv/bin/python bench/media.py [--repeat 5]

1. A 1080p H.264 MP4 of ~100 MB (synthetic noise frames, encoded here with PyAV,
   index at the end as most recorders write it) is put in storage. The poster
   job the processor runs (`analyse_video`: ranged GETs on a presigned URL, the
   key frame near 1 s, two WebP thumbnails) is timed against
   `ffmpeg -ss 1 -i URL -frames:v 1` on the same presigned URL (the ffmpeg binary
   of the `imageio-ffmpeg` wheel), and the bytes our job read are set against the
   file's size.
2. A 40-page PDF of vector drawings is put in storage; our first-page preview
   (`analyse_pdf`, PDFium through ranged GETs) is timed against
   `pdftoppm -f 1 -l 1` (Debian `poppler-utils`) reading the same file from disk.

Medians of `--repeat` runs; ratios > 1 mean ours is faster.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import av
import boto3
from botocore.config import Config
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from services.stack.seaweedfs import configure_bucket

from services.processor.document import analyse_pdf
from services.processor.imaging import Rejection
from services.processor.media import MediaLimits, MediaReport, MediaSource
from services.processor.video import analyse_video
from shared.presign import Presigner
from shared.s3 import credentials
from shared.settings import Settings

MiB = 1024 * 1024


def make_mp4(path: Path, target_bytes: int) -> float:
    """1080p noise frames at a high bit rate until the file is about `target_bytes`."""
    started = time.perf_counter()
    width, height, fps = 1920, 1080, 25
    frames = [
        av.VideoFrame.from_image(
            Image.frombytes("RGB", (width, height), os.urandom(width * height * 3))
        )
        for _ in range(4)
    ]
    with av.open(str(path), "w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=fps, options={"preset": "ultrafast", "g": "25"})
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.bit_rate = 80_000_000
        written = index = 0
        while written < target_bytes:
            for packet in stream.encode(frames[index % len(frames)]):
                written += packet.size
                out.mux(packet)
            index += 1
        for packet in stream.encode():
            out.mux(packet)
    return time.perf_counter() - started


def make_pdf(path: Path, pages: int = 40) -> None:
    """Pages of a few thousand filled and stroked shapes each: real rendering work."""
    objects = [b"<< /Type /Catalog /Pages 2 0 R >>"]
    kids = " ".join(f"{3 + 2 * i} 0 R" for i in range(pages)).encode()
    objects.append(b"<< /Type /Pages /Kids [" + kids + b"] /Count %d >>" % pages)
    for page in range(pages):
        ops = []
        for i in range(3000):
            x, y = (i * 37 + page * 11) % 560, (i * 53) % 800
            ops.append(
                b"%.3f %.3f %.3f rg %d %d 30 20 re f" % (i % 7 / 7, i % 5 / 5, i % 3 / 3, x, y)
            )
            ops.append(b"0 0 0 RG %d %d m %d %d l S" % (x, y, (x * 3) % 595, (y * 7) % 842))
        content = b"\n".join(ops)
        objects.append(
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] /Contents %d 0 R >>"
            % (4 + 2 * page)
        )
        objects.append(b"<< /Length %d >>\nstream\n" % len(content) + content + b"\nendstream")
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
    path.write_bytes(bytes(out))


def median_seconds(fn: Callable[[], object], repeat: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeat):
        started = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times), result


def ffmpeg_binary() -> str:
    try:
        import imageio_ffmpeg
    except ImportError:
        sys.exit("install the bench extras: pip install -e '.[bench]' (imageio-ffmpeg)")
    return str(imageio_ffmpeg.get_ffmpeg_exe())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--mp4-mb", type=int, default=100)
    args = parser.parse_args()

    settings = Settings()
    configure_bucket(settings, settings.s3_endpoint_url)
    s3 = boto3.client(
        "s3",
        endpoint_url=settings.s3_endpoint_url,
        region_name=settings.s3_region,
        aws_access_key_id=settings.s3_access_key,
        aws_secret_access_key=settings.s3_secret_key.get_secret_value(),
        config=Config(signature_version="s3v4", s3={"addressing_style": "path"}),
    )
    presigner = Presigner(
        endpoint_url=settings.s3_endpoint_url,
        region=settings.s3_region,
        credentials=credentials(settings),
    )
    limits = MediaLimits(
        sizes=tuple(settings.thumbnail_sizes),
        max_pixels=settings.max_image_pixels,
        read_bytes=settings.media_read_bytes,
    )
    ffmpeg = ffmpeg_binary()
    pdftoppm = shutil.which("pdftoppm")
    run_id = os.urandom(4).hex()

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        mp4 = work / "clip.mp4"
        made = make_mp4(mp4, args.mp4_mb * 1_000_000)
        size = mp4.stat().st_size
        key = f"bench/media-{run_id}/clip.mp4"
        s3.upload_file(str(mp4), settings.bucket, key, ExtraArgs={"ServerSideEncryption": "AES256"})
        etag = s3.head_object(Bucket=settings.bucket, Key=key)["ETag"].strip('"')
        url = presigner.presign_get(settings.bucket, key, expires_in=3600).url
        print(
            f"MP4: 1920×1080 H.264, {size / MiB:.1f} MiB (index at the end), made in {made:.1f} s"
        )

        source = MediaSource(url=url, size=size, etag=etag)
        ours_s, report = median_seconds(
            lambda: analyse_video(source, "video/mp4", limits), args.repeat
        )
        if isinstance(report, Rejection) or not isinstance(report, MediaReport):
            sys.exit(f"our poster job refused the file: {report}")
        poster_png = work / "poster.png"
        cli = [
            ffmpeg,
            "-v",
            "error",
            "-y",
            "-ss",
            "1",
            "-i",
            url,
            "-frames:v",
            "1",
            str(poster_png),
        ]
        theirs_s, _ = median_seconds(lambda: subprocess.run(cli, check=True), args.repeat)
        print(
            f"poster: ours {ours_s * 1000:.0f} ms (2 WebP thumbnails) vs ffmpeg CLI "
            f"{theirs_s * 1000:.0f} ms (1 full-size PNG) → {theirs_s / ours_s:.1f}× "
            f"(goal > 1)"
        )
        read = report.read
        print(
            f"bytes read per poster: {read.bytes_read / MiB:.2f} MiB of {size / MiB:.1f} MiB "
            f"= {read.bytes_read / size:.2%} in {read.requests} ranged GETs "
            "(goal: a small fraction)"
        )
        s3.delete_object(Bucket=settings.bucket, Key=key)

        pdf = work / "doc.pdf"
        make_pdf(pdf)
        pdf_size = pdf.stat().st_size
        pdf_key = f"bench/media-{run_id}/doc.pdf"
        s3.upload_file(
            str(pdf), settings.bucket, pdf_key, ExtraArgs={"ServerSideEncryption": "AES256"}
        )
        pdf_etag = s3.head_object(Bucket=settings.bucket, Key=pdf_key)["ETag"].strip('"')
        pdf_source = MediaSource(
            url=presigner.presign_get(settings.bucket, pdf_key, expires_in=3600).url,
            size=pdf_size,
            etag=pdf_etag,
        )
        ours_pdf_s, pdf_report = median_seconds(
            lambda: analyse_pdf(pdf_source, "application/pdf", limits), args.repeat
        )
        if not isinstance(pdf_report, MediaReport):
            sys.exit(f"our preview job refused the PDF: {pdf_report}")
        print(
            f"PDF: 40 pages of vector drawings, {pdf_size / MiB:.1f} MiB; preview read "
            f"{pdf_report.read.bytes_read / MiB:.2f} MiB in {pdf_report.read.requests} GETs"
        )
        if pdftoppm is None:
            print("pdftoppm not found (apt-get install poppler-utils): PDF ratio skipped")
        else:
            page = work / "page"
            cli = [pdftoppm, "-f", "1", "-l", "1", "-scale-to", "1024", "-png", str(pdf), str(page)]
            theirs_pdf_s, _ = median_seconds(lambda: subprocess.run(cli, check=True), args.repeat)
            print(
                f"first page: ours {ours_pdf_s * 1000:.0f} ms (from storage, 2 WebP) vs pdftoppm "
                f"{theirs_pdf_s * 1000:.0f} ms (local file, 1 PNG at 1024 px) → "
                f"{theirs_pdf_s / ours_pdf_s:.1f}× (goal > 1)"
            )
        s3.delete_object(Bucket=settings.bucket, Key=pdf_key)


if __name__ == "__main__":
    main()
