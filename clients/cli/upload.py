"""`clearance upload FILE…`, `clearance status ID` and `clearance watch ID`.

`upload` declares each file to the gateway, sends its bytes straight to storage
(one presigned PUT, or parts in parallel with per-part retries), completes it and,
with `--wait`, follows the pipeline until the upload is final. A rerun after a crash
or Ctrl-C continues where storage left off (see `clients.cli.resume`).

Exit codes (several files: the code of the first file that did not succeed):

    0  every file completed (with --wait: every file is ready)
    1  another error (e.g. storage refused a signed request, the file changed)
    2  bad usage (no token, unreadable file, bad option)
    3  refused by the gateway's policy before any byte was sent
    4  authentication failed (missing, invalid or expired token)
    5  infected (quarantined)
    6  rejected (not what it claimed to be, corrupt, size mismatch)
    7  failed, expired or aborted
    8  gave up: the network or a service kept failing, or --wait timed out
"""

from __future__ import annotations

import argparse
import asyncio
import mimetypes
import os
import re
import stat
import sys
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import IntEnum
from typing import TYPE_CHECKING, Any, TextIO, TypeVar

from shared.sniff import SNIFF_BYTES, sniff_type

if TYPE_CHECKING:
    from aiohttp import ClientSession

    from clients.cli.gateway import Gateway
    from clients.cli.progress import ProgressBoard
    from clients.cli.transfer import SendResult, TransferContext

T = TypeVar("T")

TOKEN_ENV = "CLEARANCE_TOKEN"  # noqa: S105 (the variable's name, not a secret)
IMAGE_TYPES = frozenset(
    {"image/jpeg", "image/png", "image/gif", "image/heic", "image/heif", "image/avif"}
)
IMAGE_PROFILE_MAX = 10_000_000  # the default `image` profile's limit


class ExitCode(IntEnum):
    OK = 0
    ERROR = 1
    USAGE = 2
    REFUSED = 3
    AUTH = 4
    INFECTED = 5
    REJECTED = 6
    FAILED = 7
    GAVE_UP = 8


def exit_code_for_status(status: str, *, waited: bool) -> ExitCode:
    """The exit code an upload's status stands for.

    Without `--wait` an upload in the pipeline (`uploaded`, `scanning`, …) is a
    success; with it, only `ready` is.
    """
    final = {
        "ready": ExitCode.OK,
        "infected": ExitCode.INFECTED,
        "rejected": ExitCode.REJECTED,
        "failed": ExitCode.FAILED,
        "expired": ExitCode.FAILED,
        "aborted": ExitCode.FAILED,
    }
    if status in final:
        return final[status]
    return ExitCode.GAVE_UP if waited else ExitCode.OK


def exit_code_for_error(exc: BaseException) -> ExitCode:
    """The exit code for an error that ended one file's upload."""
    from clients.cli.gateway import GatewayError, GaveUp
    from clients.cli.transfer import Refused

    if isinstance(exc, Refused):
        return ExitCode.AUTH if exc.error.status in (401, 403) else ExitCode.REFUSED
    if isinstance(exc, GatewayError):
        if exc.status in (401, 403):
            return ExitCode.AUTH
        if exc.upload_status is not None:
            return exit_code_for_status(exc.upload_status, waited=True)
        return ExitCode.ERROR
    if isinstance(exc, GaveUp | TimeoutError):
        return ExitCode.GAVE_UP
    return ExitCode.ERROR


def overall_exit_code(codes: Sequence[int]) -> int:
    """The run's exit code: 0, or the code of the first file that did not succeed."""
    return next((c for c in codes if c != 0), 0)


def guess_content_type(path: str, head: bytes) -> str:
    """The file's type from its first bytes (what the processor will check), else its name."""
    sniffed = sniff_type(head)
    if sniffed is not None:
        return sniffed
    by_name, _ = mimetypes.guess_type(path, strict=False)
    return by_name or "application/octet-stream"


def default_profile(content_type: str, size: int) -> str:
    """`image` for an image the image profile can take, `media` for anything else."""
    if content_type in IMAGE_TYPES and size <= IMAGE_PROFILE_MAX:
        return "image"
    return "media"


_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmg]?)(i?b?)?\s*$", re.IGNORECASE)


def parse_rate(text: str) -> float:
    """`500K`, `20M`, `1.5G` (per second, binary multiples) or plain bytes per second."""
    match = _RATE.match(text)
    if match is None or float(match.group(1)) <= 0:
        raise argparse.ArgumentTypeError(f"not a rate: {text!r} (e.g. 500K, 20M)")
    scale = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}[match.group(2).lower()]
    return float(match.group(1)) * scale


def _parallel(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 1 <= value <= 64:
        raise argparse.ArgumentTypeError("must be between 1 and 64")
    return value


def add_commands(subparsers: Any) -> None:
    """Register `upload`, `status` and `watch` on the `clearance` subcommand parser."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--gateway", metavar="URL", help="gateway URL (default: settings)")
    common.add_argument("--token", help=f"bearer token (default: ${TOKEN_ENV})")

    p = subparsers.add_parser(
        "upload",
        parents=[common],
        help="send files straight to storage through the gateway",
        description="Send files straight to storage: parallel parts, retries, resume.",
        epilog=__doc__.split("\n\n", 2)[2] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument("--profile", help="upload profile (default: image for small images, else media)")
    p.add_argument("--type", dest="content_type", metavar="MIME", help="declared content type")
    p.add_argument(
        "--parallel", type=_parallel, default=4, metavar="N", help="parts in flight (default 4)"
    )
    p.add_argument("--wait", action="store_true", help="follow each upload until it is final")
    p.add_argument(
        "--wait-timeout",
        type=float,
        default=900.0,
        metavar="SECONDS",
        help="give up waiting after this long (default 900; 0: never)",
    )
    p.add_argument(
        "--state-dir", metavar="DIR", help="resume state (default ~/.cache/clearance/uploads)"
    )
    p.add_argument("--no-resume", action="store_true", help="ignore and keep no resume state")
    p.add_argument("--limit-rate", type=parse_rate, metavar="RATE", help="e.g. 500K, 20M per s")
    p.add_argument(
        "--progress",
        choices=["auto", "bars", "lines", "off"],
        default="auto",
        help="bars on a terminal, periodic lines otherwise (default auto)",
    )
    p.add_argument("--json", action="store_true", help="one JSON result per file on stdout")
    p.set_defaults(func=cmd_upload)

    p = subparsers.add_parser("status", parents=[common], help="show an upload's record")
    p.add_argument("upload_id", metavar="ID")
    p.add_argument("--json", action="store_true", help="print the whole record as JSON")
    p.set_defaults(func=cmd_status)

    p = subparsers.add_parser(
        "watch", parents=[common], help="follow an upload's stages until it is final"
    )
    p.add_argument("upload_id", metavar="ID")
    p.add_argument(
        "--timeout", type=float, default=0.0, metavar="SECONDS", help="give up after (0: never)"
    )
    p.set_defaults(func=cmd_watch)


# -- shared plumbing ----------------------------------------------------------


class UsageError(Exception):
    pass


def _token(args: argparse.Namespace) -> str:
    token = (args.token or os.environ.get(TOKEN_ENV) or "").strip()
    if not token:
        raise UsageError(
            f"no token: pass --token or set {TOKEN_ENV} (locally: clearance token <you>)"
        )
    return token


def _gateway_url(args: argparse.Namespace) -> str:
    if args.gateway:
        url: str = args.gateway
    else:
        from pydantic import ValidationError

        from shared.settings import Settings

        try:
            url = Settings().public_url
        except ValidationError as exc:
            raise UsageError(f"invalid settings and no --gateway: {exc}") from None
    if not url.startswith(("http://", "https://")):
        raise UsageError(f"the gateway URL must start with http:// or https://: {url!r}")
    return url.rstrip("/")


def _run(coro: Coroutine[Any, Any, T]) -> T:
    """Run on uvloop when it is installed (faster sockets), else on the stdlib loop."""
    try:
        import uvloop
    except ImportError:  # optional speed-up
        return asyncio.run(coro)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


def _session(parallel: int) -> ClientSession:
    from aiohttp import ClientSession, TCPConnector

    # Enough connections for every part in flight plus the gateway calls and streams.
    connector = TCPConnector(limit=parallel * 2 + 8, limit_per_host=0, ttl_dns_cache=300)
    return ClientSession(connector=connector, auto_decompress=False)


@dataclass(frozen=True, slots=True)
class Target:
    """Where to talk and as whom, resolved before the event loop starts."""

    gateway: str
    token: str


def _command(
    body: Callable[[argparse.Namespace, Target], Coroutine[Any, Any, int]],
) -> Callable[[argparse.Namespace], int]:
    """An argparse `func` for `status`/`watch`: resolve the target, run the command."""

    def run(args: argparse.Namespace) -> int:
        try:
            target = Target(_gateway_url(args), _token(args))
        except UsageError as exc:
            print(f"clearance {args.command}: {exc}", file=sys.stderr)
            return ExitCode.USAGE
        return _run(body(args, target))

    run.__doc__ = body.__doc__
    return run


# -- upload -------------------------------------------------------------------


@dataclass(slots=True)
class FileJob:
    path: str  # absolute
    size: int
    content_type: str
    profile: str


@dataclass(slots=True)
class UploadRun:
    """Everything `upload` needs, resolved before any network call."""

    token: str
    gateway: str
    jobs: list[FileJob]
    state_dir: str | None  # None: --no-resume
    progress: str  # bars, lines or off


def _check_files(args: argparse.Namespace) -> list[FileJob]:
    """Every named file must be a readable regular file; nothing is sent otherwise."""
    jobs = []
    for path in args.files:
        try:
            with open(path, "rb") as f:
                st = os.fstat(f.fileno())
                if not stat.S_ISREG(st.st_mode):
                    raise UsageError(f"{path}: not a regular file")
                head = f.read(SNIFF_BYTES)
        except OSError as exc:
            raise UsageError(f"{path}: {exc.strerror or exc}") from None
        content_type = args.content_type or guess_content_type(path, head)
        profile = args.profile or default_profile(content_type, st.st_size)
        jobs.append(FileJob(os.path.abspath(path), st.st_size, content_type, profile))
    return jobs


def prepare_upload(args: argparse.Namespace) -> UploadRun:
    """Check the token, gateway and files (UsageError, before any byte is sent)."""
    from clients.cli.resume import default_state_dir

    mode = args.progress
    if mode == "auto":
        mode = "bars" if sys.stderr.isatty() else "lines"
    state_dir = None
    if not args.no_resume:
        state_dir = os.path.abspath(args.state_dir) if args.state_dir else str(default_state_dir())
    return UploadRun(
        token=_token(args),
        gateway=_gateway_url(args),
        jobs=_check_files(args),
        state_dir=state_dir,
        progress=mode,
    )


def cmd_upload(args: argparse.Namespace) -> int:
    """Send every file; with --wait, follow each until it is final."""
    try:
        run = prepare_upload(args)
    except UsageError as exc:
        print(f"clearance upload: {exc}", file=sys.stderr)
        return ExitCode.USAGE
    return _run(upload_files(args, run))


async def upload_files(args: argparse.Namespace, run: UploadRun) -> int:
    """Send every file of `run`, several at a time; the run's exit code."""
    from pathlib import Path

    from clients.cli.gateway import Gateway
    from clients.cli.progress import ProgressBoard
    from clients.cli.resume import StateStore
    from clients.cli.transfer import RateLimiter, TransferContext

    human = sys.stderr if args.json else sys.stdout
    states = StateStore(Path(run.state_dir)) if run.state_dir else None
    async with _session(args.parallel) as http, ProgressBoard(sys.stderr, run.progress) as board:
        gateway = Gateway(http, run.gateway, run.token)
        ctx = TransferContext(
            http=http,
            gateway=gateway,
            states=states,
            parallel=args.parallel,
            limiter=RateLimiter(args.limit_rate) if args.limit_rate else None,
            notify=lambda message: board.note(message, stream=human),
        )
        files = asyncio.Semaphore(args.parallel)

        async def one(job: FileJob) -> int:
            # Sending takes a file slot; following the pipeline afterwards does not.
            async with files:
                code, result = await _send_one(args, ctx, board, job, human)
            if result is None:
                return code
            return await _report_one(args, gateway, board, result, human)

        codes = await asyncio.gather(*(one(job) for job in run.jobs))
    return overall_exit_code(codes)


async def _send_one(
    args: argparse.Namespace,
    ctx: TransferContext,
    board: ProgressBoard,
    job: FileJob,
    human: TextIO,
) -> tuple[int, SendResult | None]:
    """Send one file; (exit code, result) — no result if it failed."""
    import orjson

    from clients.cli.gateway import GatewayError, GaveUp
    from clients.cli.progress import human_bytes
    from clients.cli.transfer import FileChanged, FileUpload, Refused, StorageRefused

    name = os.path.basename(job.path)
    progress = board.add(name, job.size)
    upload = FileUpload(
        ctx, job.path, content_type=job.content_type, profile=job.profile, progress=progress
    )
    try:
        result = await upload.run()
    except (
        Refused,
        GatewayError,
        GaveUp,
        StorageRefused,
        FileChanged,
        OSError,
        TimeoutError,
    ) as exc:  # this file's failure becomes its exit code; the other files go on
        progress.finish("failed")
        code = exit_code_for_error(exc)
        board.note(f"{name}: {_failure_text(exc, code, resumable=ctx.states is not None)}")
        if args.json:
            line = {"path": job.path, "error": str(exc), "exit_code": int(code)}
            board.note(orjson.dumps(line).decode(), stream=sys.stdout)
        return code, None
    progress.finish(result.status)
    rate = result.bytes_sent / result.seconds if result.seconds > 0 else 0.0
    summary = f"{name}: {result.status} as {result.upload_id}"
    detail = f"{human_bytes(result.bytes_sent)} sent in {result.seconds:.1f} s"
    if result.bytes_sent:
        detail += f" ({human_bytes(rate)}/s)"
    if result.reused_parts:
        detail += f"; {len(result.reused_parts)} of {result.part_count} parts were already stored"
    board.note(f"{summary} — {detail}", stream=human)
    return ExitCode.OK, result


async def _report_one(
    args: argparse.Namespace,
    gateway: Gateway,
    board: ProgressBoard,
    result: SendResult,
    human: TextIO,
) -> int:
    """With --wait, follow the pipeline; with --json, print the result. The exit code."""
    import orjson

    outcome: int = ExitCode.OK
    if args.wait:
        outcome, result.status = await _wait(
            gateway, board, result.filename, result.upload_id, args.wait_timeout, human
        )
    if args.json:
        doc = result.as_json()
        doc["exit_code"] = outcome
        board.note(orjson.dumps(doc).decode(), stream=sys.stdout)
    return outcome


def _failure_text(exc: BaseException, code: ExitCode, *, resumable: bool) -> str:
    from clients.cli.transfer import Refused

    if isinstance(exc, Refused):
        return f"refused by the gateway, nothing was sent\n{exc.error.describe()}"
    text = str(exc) or type(exc).__name__
    if code is ExitCode.AUTH:
        return f"authentication failed: {text}"
    if code is ExitCode.GAVE_UP and resumable:
        return f"gave up: {text}\n  run the same command again to resume"
    return text


async def _wait(
    gateway: Gateway,
    board: ProgressBoard,
    name: str,
    upload_id: str,
    limit_seconds: float,
    human: TextIO,
) -> tuple[int, str]:
    """Follow the upload's stages; (exit code, last status)."""
    from clients.cli.gateway import GatewayError, GaveUp

    status = "unknown"
    clock = StageClock()
    try:
        async with asyncio.timeout(limit_seconds or None):
            async for entry in gateway.follow(upload_id):
                status = str(entry.get("status"))
                board.note(f"{name}: {clock.describe(entry)}", stream=human)
    except TimeoutError:
        board.note(f"{name}: still {status} after {limit_seconds:.0f} s; gave up waiting")
        return ExitCode.GAVE_UP, status
    except (GatewayError, GaveUp) as exc:
        board.note(f"{name}: could not follow the upload: {exc}")
        return exit_code_for_error(exc), status
    code = exit_code_for_status(status, waited=True)
    if code is not ExitCode.OK:
        try:
            record = await gateway.get(upload_id)
        except (GatewayError, GaveUp) as exc:
            board.note(f"{name}: {status} (the reason could not be read: {exc})")
        else:
            board.note(f"{name}: {status}: {record.get('reason') or 'no reason given'}")
    return code, status


class StageClock:
    """Describes pipeline events with their time since the first one (the declaration)."""

    def __init__(self) -> None:
        self.origin: datetime | None = None

    def describe(self, entry: dict[str, Any]) -> str:
        from clients.cli.gateway import parse_time

        try:
            at = parse_time(str(entry.get("at")))
        except ValueError:
            at = datetime.now(UTC)
        if self.origin is None:
            self.origin = at
        detail = entry.get("detail") or {}
        shown = []
        if isinstance(detail, dict):
            for key, value in detail.items():
                if isinstance(value, float):
                    shown.append(f"{key}={value:.1f}")
                elif isinstance(value, str | int | bool):
                    shown.append(f"{key}={value}")
        actor = entry.get("actor") or "?"
        elapsed = (at - self.origin).total_seconds()
        extra = f" {' '.join(shown[:4])}" if shown else ""
        return f"{entry.get('status')} (+{elapsed:.2f}s, {actor}){extra}"


# -- status and watch ---------------------------------------------------------


async def status_command(args: argparse.Namespace, target: Target) -> int:
    """Print one upload's record."""
    import orjson

    from clients.cli.gateway import Gateway, GatewayError, GaveUp

    async with _session(1) as http:
        try:
            record = await Gateway(http, target.gateway, target.token).get(args.upload_id)
        except (GatewayError, GaveUp) as exc:
            print(f"clearance status: {exc}", file=sys.stderr)
            return exit_code_for_error(exc)
    if args.json:
        print(orjson.dumps(record, option=orjson.OPT_INDENT_2).decode())
    else:
        print(format_record(record))
    status = str(record.get("status"))
    return exit_code_for_status(status, waited=False)


def format_record(record: dict[str, Any]) -> str:
    """An upload's record in a few lines."""
    from clients.cli.progress import human_bytes

    lines = [
        f"{record.get('id')}  {record.get('status')}  {record.get('filename')}  "
        f"{record.get('content_type')}  {human_bytes(int(record.get('size') or 0))}  "
        f"profile {record.get('profile')}"
    ]
    if record.get("reason"):
        lines.append(f"  reason: {record['reason']}")
    detected = record.get("detected") or {}
    if isinstance(detected, dict) and detected:
        flat = [f"{k}={v}" for k, v in detected.items() if isinstance(v, str | int | float | bool)]
        if flat:
            lines.append(f"  detected: {' '.join(flat)}")
        video = detected.get("video")
        if isinstance(video, dict):
            named = (video.get("video_codec"), video.get("audio_codec"))
            codecs = "+".join(str(codec) for codec in named if codec)
            lines.append(
                f"  video: {video.get('width')}×{video.get('height')}  "
                f"{video.get('duration')} s  {codecs}  rotation {video.get('rotation')}"
            )
        document = detected.get("document")
        if isinstance(document, dict):
            title = f"  {document['title']!r}" if document.get("title") else ""
            lines.append(
                f"  document: {document.get('pages')} pages  "
                f"{document.get('page_width')}×{document.get('page_height')} pt{title}"
            )
    timeline = record.get("timeline") or []
    if timeline:
        lines.append("  timeline: " + " → ".join(_timeline_item(t) for t in timeline))
    thumbs = record.get("thumbnails") or []
    if thumbs:
        sizes = ", ".join(f"{t.get('width')}×{t.get('height')}" for t in thumbs)
        lines.append(f"  thumbnails: {sizes}")
    return "\n".join(lines)


def _timeline_item(item: dict[str, Any]) -> str:
    at = str(item.get("at", ""))
    clock = at[11:19] if len(at) >= 19 else at
    return f"{item.get('status')} {clock}"


async def watch_command(args: argparse.Namespace, target: Target) -> int:
    """Print an upload's stages as they happen, until it is final."""
    from clients.cli.gateway import Gateway, GatewayError, GaveUp

    status = "unknown"
    clock = StageClock()
    async with _session(1) as http:
        gateway = Gateway(http, target.gateway, target.token)
        try:
            async with asyncio.timeout(args.timeout or None):
                async for entry in gateway.follow(args.upload_id):
                    status = str(entry.get("status"))
                    print(clock.describe(entry), flush=True)
        except TimeoutError:
            print(f"still {status} after {args.timeout:.0f} s", file=sys.stderr)
            return ExitCode.GAVE_UP
        except (GatewayError, GaveUp) as exc:
            print(f"clearance watch: {exc}", file=sys.stderr)
            return exit_code_for_error(exc)
        code = exit_code_for_status(status, waited=True)
        if code is not ExitCode.OK:
            record = await gateway.get(args.upload_id)
            print(f"{status}: {record.get('reason') or 'no reason given'}", file=sys.stderr)
    return code


cmd_status = _command(status_command)
cmd_watch = _command(watch_command)
