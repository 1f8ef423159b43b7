"""Thumbnails from a 12 MP JPEG: the processor's imaging core against two baselines.

Run: `.venv/bin/python bench/thumbnails.py [--repeats N]` (pyvips comes with the
`bench` extra). Each contender turns the same 4000×3000 photo-like JPEG
(quality 90) into a 1024 px and a 256 px WebP:

- ours: `analyse_image` — the whole verification (sniff, pixel limit, full
  decode, EXIF, SHA-256) plus both thumbnails, WebP quality 80, method 0;
  once on one thread (the default) and once with `threads=2`.
- naive Pillow: full-resolution decode, `resize(LANCZOS)` from the full image
  to each size, WebP saved with Pillow's defaults (quality 80, method 4).
- libvips: `thumbnail_buffer(data, size)` per size (shrink-on-load, lanczos3),
  `webpsave_buffer(Q=80, effort=0, keep="none")`, operation cache off so
  repeats do real work; once with libvips' default thread pool and once
  limited to one thread.

Rounds interleave the contenders so machine noise hits all of them alike; the
best time per contender is the headline, the median is shown beside it. Quality
is the PSNR of each 1024 px result against a full-resolution Lanczos resize.
"""

from __future__ import annotations

import argparse
import io
import math
import random
import statistics
import time
from collections.abc import Callable
from typing import Any

from PIL import Image, ImageChops, ImageDraw, ImageFilter

from services.processor.imaging import ImageReport, analyse_image

SIZES = (1024, 256)
QUALITY = 80
PHOTO_SIZE = (4000, 3000)

Thumbnails = list[bytes]


def photo_like_jpeg(size: tuple[int, int] = PHOTO_SIZE, seed: int = 7) -> bytes:
    """A JPEG that compresses like a photo: smooth gradients, soft shapes, sensor noise."""
    rnd = random.Random(seed)
    width, height = size
    channels = (
        Image.linear_gradient("L").resize(size),
        Image.radial_gradient("L").resize(size),
        Image.linear_gradient("L").rotate(90).resize(size),
    )
    im = Image.merge("RGB", channels)
    draw = ImageDraw.Draw(im)
    for _ in range(60):
        x, y = rnd.randrange(width), rnd.randrange(height)
        shape = (x, y, x + rnd.randrange(50, 900), y + rnd.randrange(50, 700))
        colour = (rnd.randrange(256), rnd.randrange(256), rnd.randrange(256))
        (draw.ellipse if rnd.random() < 0.5 else draw.rectangle)(shape, fill=colour)
    for _ in range(40):
        x, y = rnd.randrange(width), rnd.randrange(height)
        draw.line((x, y, x + rnd.randrange(-800, 800), y + rnd.randrange(-800, 800)), width=3)
    im = im.filter(ImageFilter.GaussianBlur(3))
    noise = Image.effect_noise(size, 10).convert("RGB")
    im = ImageChops.add(im, noise, scale=1.0, offset=-128)
    out = io.BytesIO()
    im.save(out, "JPEG", quality=90)
    return out.getvalue()


def ours(threads: int) -> Callable[[bytes], Thumbnails]:
    def run(data: bytes) -> Thumbnails:
        result = analyse_image(
            data, declared_type="image/jpeg", sizes=SIZES, max_pixels=50_000_000, threads=threads
        )
        assert isinstance(result, ImageReport), result
        return [d.data for d in result.derivatives]

    return run


def naive_pillow(data: bytes) -> Thumbnails:
    im = Image.open(io.BytesIO(data))
    im.load()
    out = []
    for size in SIZES:
        scale = size / max(im.size)
        thumb = im.resize(
            (round(im.width * scale), round(im.height * scale)), Image.Resampling.LANCZOS
        )
        buf = io.BytesIO()
        thumb.save(buf, "WEBP")
        out.append(buf.getvalue())
    return out


def libvips(pyvips: Any, threads: int | None) -> Callable[[bytes], Thumbnails]:
    def run(data: bytes) -> Thumbnails:
        pyvips.concurrency_set(threads or 0)  # 0: libvips' default (one per core)
        return [
            pyvips.Image.thumbnail_buffer(data, size).webpsave_buffer(
                Q=QUALITY, effort=0, keep="none"
            )
            for size in SIZES
        ]

    return run


def psnr(reference: Image.Image, webp: bytes) -> float:
    """PSNR in dB of a decoded WebP against `reference` (same size, RGB)."""
    candidate = Image.open(io.BytesIO(webp)).convert("RGB")
    histogram = ImageChops.difference(reference, candidate).histogram()
    squared = sum(count * (level % 256) ** 2 for level, count in enumerate(histogram))
    mse = max(squared, 1) / (reference.width * reference.height * 3)
    return 10 * math.log10(255**2 / mse)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=9, help="rounds per contender")
    args = parser.parse_args()

    data = photo_like_jpeg()
    print(f"source: {PHOTO_SIZE[0]}×{PHOTO_SIZE[1]} JPEG q90, {len(data) / 1e6:.2f} MB")

    contenders: dict[str, Callable[[bytes], Thumbnails]] = {
        "ours (1 thread)": ours(1),
        "ours (2 threads)": ours(2),
        "naive Pillow": naive_pillow,
    }
    try:
        import pyvips  # type: ignore[import-untyped]
    except ImportError:
        print("libvips: pyvips not installed (pip install '.[bench]'), skipped")
    else:
        pyvips.cache_set_max(0)
        print(f"libvips {pyvips.version(0)}.{pyvips.version(1)}.{pyvips.version(2)}")
        contenders["libvips (default threads)"] = libvips(pyvips, None)
        contenders["libvips (1 thread)"] = libvips(pyvips, 1)

    outputs = {name: run(data) for name, run in contenders.items()}  # warm-up
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(args.repeats):
        for name, run in contenders.items():
            started = time.perf_counter()
            run(data)
            times[name].append((time.perf_counter() - started) * 1000)

    full = Image.open(io.BytesIO(data)).convert("RGB")
    reference = full.resize((1024, 768), Image.Resampling.LANCZOS)
    best = {name: min(samples) for name, samples in times.items()}
    print(f"\n{'contender':<27}{'best ms':>9}{'median':>9}{'1024 KB':>9}{'256 KB':>8}{'PSNR':>7}")
    for name, samples in times.items():
        big, small = outputs[name]
        for blob, size in ((big, 1024), (small, 256)):
            assert max(Image.open(io.BytesIO(blob)).size) == size, (name, size)
        print(
            f"{name:<27}{best[name]:>9.1f}{statistics.median(samples):>9.1f}"
            f"{len(big) / 1024:>9.1f}{len(small) / 1024:>8.1f}{psnr(reference, big):>7.1f}"
        )

    vips = min((best[name] for name in contenders if name.startswith("libvips")), default=None)
    for mine in ("ours (1 thread)", "ours (2 threads)"):
        print(f"\n{mine}:")
        for name in contenders:
            if not name.startswith("ours"):
                print(f"  {name} / ours: {best[name] / best[mine]:.2f}×")
        naive_ratio = best["naive Pillow"] / best[mine]
        print(f"  goal ≥ 4× faster than naive Pillow: {'met' if naive_ratio >= 4 else 'NOT met'}")
        if vips is not None:
            faster = best[mine] < vips
            print(f"  goal faster than libvips (best of both): {'met' if faster else 'NOT met'}")


if __name__ == "__main__":
    main()
