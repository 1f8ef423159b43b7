"""The `upload`/`status`/`watch` commands' pure parts: exit codes, types, profiles, output."""

from __future__ import annotations

import argparse
import io

import pytest

from clients.cli.gateway import GatewayError, GaveUp
from clients.cli.progress import FileProgress, ProgressBoard, human_bytes, human_duration
from clients.cli.transfer import FileChanged, Refused, StorageRefused
from clients.cli.upload import (
    ExitCode,
    add_commands,
    default_profile,
    exit_code_for_error,
    exit_code_for_status,
    format_record,
    guess_content_type,
    overall_exit_code,
    parse_rate,
)

JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00"
MP4 = b"\x00\x00\x00\x20ftypisom\x00\x00\x02\x00isomiso2avc1mp41"


class TestExitCodes:
    @pytest.mark.parametrize(
        ("status", "code"),
        [
            ("ready", ExitCode.OK),
            ("infected", ExitCode.INFECTED),
            ("rejected", ExitCode.REJECTED),
            ("failed", ExitCode.FAILED),
            ("expired", ExitCode.FAILED),
            ("aborted", ExitCode.FAILED),
        ],
    )
    def test_final_statuses(self, status: str, code: ExitCode) -> None:
        assert exit_code_for_status(status, waited=True) is code
        assert exit_code_for_status(status, waited=False) is code

    @pytest.mark.parametrize("status", ["pending", "uploading", "uploaded", "scanning"])
    def test_in_progress_is_success_unless_we_waited_for_the_end(self, status: str) -> None:
        assert exit_code_for_status(status, waited=False) is ExitCode.OK
        assert exit_code_for_status(status, waited=True) is ExitCode.GAVE_UP

    def test_errors(self) -> None:
        policy = GatewayError(422, {"detail": "no", "errors": [{"field": "size"}]}, "POST x")
        assert exit_code_for_error(Refused(policy)) is ExitCode.REFUSED
        assert exit_code_for_error(GatewayError(401, {}, "POST x")) is ExitCode.AUTH
        assert exit_code_for_error(Refused(GatewayError(401, {}, "x"))) is ExitCode.AUTH
        rejected = GatewayError(409, {"upload_status": "rejected"}, "POST c")
        assert exit_code_for_error(rejected) is ExitCode.REJECTED
        assert exit_code_for_error(GatewayError(409, {}, "POST c")) is ExitCode.ERROR
        assert exit_code_for_error(GaveUp("x")) is ExitCode.GAVE_UP
        assert exit_code_for_error(TimeoutError()) is ExitCode.GAVE_UP
        assert exit_code_for_error(StorageRefused("x")) is ExitCode.ERROR
        assert exit_code_for_error(FileChanged("x")) is ExitCode.ERROR

    def test_codes_are_distinct(self) -> None:
        # Iterating an IntEnum hides aliases (two names, one value); `__members__` does not.
        values = [code.value for code in ExitCode.__members__.values()]
        assert len(set(values)) == len(values), ExitCode.__members__

    def test_the_first_failure_decides(self) -> None:
        assert overall_exit_code([0, 0]) == 0
        assert overall_exit_code([0, 5, 3]) == 5
        assert overall_exit_code([]) == 0


class TestTypesAndProfiles:
    def test_magic_bytes_win_over_the_name(self) -> None:
        assert guess_content_type("photo.png", JPEG) == "image/jpeg"
        assert guess_content_type("clip.bin", MP4) == "video/mp4"
        assert guess_content_type("doc", b"%PDF-1.7\n") == "application/pdf"

    def test_the_name_when_the_bytes_say_nothing(self) -> None:
        assert guess_content_type("notes.txt", b"hello") == "text/plain"
        assert guess_content_type("blob", b"\x00\x01") == "application/octet-stream"

    def test_default_profile(self) -> None:
        assert default_profile("image/jpeg", 10_000_000) == "image"
        assert default_profile("image/jpeg", 10_000_001) == "media"
        assert default_profile("video/mp4", 1000) == "media"
        assert default_profile("application/pdf", 10) == "media"


class TestOptions:
    @pytest.mark.parametrize(
        ("text", "rate"),
        [("1000", 1000), ("500K", 500 * 1024), ("20M", 20 * 1024**2), ("1.5g", 1.5 * 1024**3)],
    )
    def test_rates(self, text: str, rate: float) -> None:
        assert parse_rate(text) == rate
        assert parse_rate(text + "iB" if text[-1].isalpha() else text) == rate

    @pytest.mark.parametrize("text", ["", "fast", "-1M", "0", "10X"])
    def test_bad_rates(self, text: str) -> None:
        with pytest.raises(argparse.ArgumentTypeError):
            parse_rate(text)

    def parser(self) -> argparse.ArgumentParser:
        parser = argparse.ArgumentParser(prog="clearance")
        add_commands(parser.add_subparsers(dest="command", required=True))
        return parser

    def test_the_commands_parse(self) -> None:
        args = self.parser().parse_args(
            ["upload", "a.mp4", "b.jpg", "--parallel", "8", "--wait", "--limit-rate", "1M"]
        )
        assert args.files == ["a.mp4", "b.jpg"]
        assert (args.parallel, args.wait, args.limit_rate) == (8, True, 1024**2)
        assert callable(args.func)
        args = self.parser().parse_args(["status", "abc", "--gateway", "http://g"])
        assert (args.upload_id, args.gateway) == ("abc", "http://g")
        assert callable(self.parser().parse_args(["watch", "abc"]).func)

    @pytest.mark.parametrize("bad", [["upload"], ["upload", "f", "--parallel", "0"]])
    def test_bad_usage_exits_2(self, bad: list[str]) -> None:
        with pytest.raises(SystemExit) as exc:
            self.parser().parse_args(bad)
        assert exc.value.code == 2


class TestOutput:
    def test_sizes_and_durations(self) -> None:
        assert human_bytes(0) == "0 B"
        assert human_bytes(1536) == "1.5 KiB"
        assert human_bytes(120 * 1024**2) == "120.0 MiB"
        assert human_duration(7.4) == "7s"
        assert human_duration(185) == "3m05s"
        assert human_duration(3720) == "1h02m"
        assert human_duration(None) == "--"

    def test_progress_takes_back_a_failed_try(self) -> None:
        p = FileProgress("f", 100)
        p.advance(60)
        p.advance(-60)
        p.skip(40)
        p.advance(10)
        assert (p.sent, p.skipped, p.done) == (10, 40, 50)

    def test_speed_and_eta_come_from_recent_samples(self) -> None:
        p = FileProgress("f", 1000, started=0.0)
        p.sample(1.0)
        p.advance(200)
        p.sample(2.0)
        assert p.speed(2.0) == pytest.approx(200.0)
        assert p.eta(2.0) == pytest.approx(4.0)

    def test_bars_fit_the_width(self) -> None:
        board = ProgressBoard(io.StringIO(), "bars")
        board.add("a-rather-long-file-name-for-a-video.mp4", 100).stage = "sending"
        board.add("b.jpg", 50).stage = "sending"
        lines = board.lines(now=1.0, width=100)
        assert len(lines) == 3  # two files and the total
        assert all(len(line) <= 100 for line in lines)
        assert "total (2 files)" in lines[-1]

    def test_a_record_in_a_few_lines(self) -> None:
        record = {
            "id": "u1",
            "status": "rejected",
            "filename": "x.jpg",
            "content_type": "image/jpeg",
            "size": 2048,
            "profile": "image",
            "reason": "declared image/jpeg but the content is image/png",
            "detected": {"type": "image/png", "width": 10},
            "timeline": [
                {"status": "pending", "at": "2026-01-01T10:00:00Z"},
                {"status": "rejected", "at": "2026-01-01T10:00:01Z"},
            ],
            "thumbnails": [],
        }
        text = format_record(record)
        assert text.splitlines()[0] == "u1  rejected  x.jpg  image/jpeg  2.0 KiB  profile image"
        assert "reason: declared image/jpeg" in text
        assert "type=image/png width=10" in text
        assert "pending 10:00:00 → rejected 10:00:01" in text
