"""The CLI's transfer rules: part planning, retry schedule, rate limiting, SSE, batching."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import pytest

from clients.cli.gateway import GaveUp, SignedPart, SseEvent, SseParser
from clients.cli.retry import RetryPolicy, is_retryable_status
from clients.cli.transfer import PartSigner, RateLimiter, _storage_code, plan_parts
from shared.settings import MiB


class TestPlanParts:
    def test_parts_cover_the_file_exactly_once(self) -> None:
        size = 120 * MiB + 7
        parts = plan_parts(size, 8 * MiB)
        assert [p.number for p in parts] == list(range(1, 17))
        assert parts[0].offset == 0
        for before, after in itertools.pairwise(parts):
            assert after.offset == before.offset + before.size
        assert sum(p.size for p in parts) == size
        assert parts[-1].size == 7
        assert all(p.size == 8 * MiB for p in parts[:-1])

    def test_an_exact_multiple_has_no_short_part(self) -> None:
        parts = plan_parts(16 * MiB, 8 * MiB)
        assert [(p.offset, p.size) for p in parts] == [(0, 8 * MiB), (8 * MiB, 8 * MiB)]

    def test_matches_the_gateways_layout_for_the_largest_file(self) -> None:
        from services.gateway.policy import part_layout

        size = 2000 * MiB - 1
        part_size, count = part_layout(size)
        assert len(plan_parts(size, part_size)) == count

    @pytest.mark.parametrize(("size", "part_size"), [(0, 8), (10, 0), (-1, 8)])
    def test_nonsense_is_refused(self, size: int, part_size: int) -> None:
        with pytest.raises(ValueError, match="positive"):
            plan_parts(size, part_size)


class TestRetryPolicy:
    def test_waits_double_up_to_the_cap_with_jitter_in_the_upper_half(self) -> None:
        policy = RetryPolicy(attempts=8, base_seconds=0.5, cap_seconds=20.0)
        lowest = policy.schedule(rand=lambda: 0.0)
        highest = policy.schedule(rand=lambda: 0.999999)
        ceilings = [0.5, 1, 2, 4, 8, 16, 20]
        assert len(lowest) == policy.attempts - 1
        assert lowest == pytest.approx([c / 2 for c in ceilings])
        assert highest == pytest.approx(ceilings, rel=1e-5)

    def test_jitter_spreads_clients_that_failed_together(self) -> None:
        policy = RetryPolicy()
        waits = {round(policy.delay(3), 6) for _ in range(50)}
        assert len(waits) > 40
        assert all(1.0 <= w <= 2.0 for w in waits)

    def test_attempts_count_from_one(self) -> None:
        with pytest.raises(ValueError, match="start at 1"):
            RetryPolicy().delay(0)

    @pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504, 599])
    def test_transient_answers_are_retried(self, status: int) -> None:
        assert is_retryable_status(status)

    @pytest.mark.parametrize("status", [400, 401, 403, 404, 409, 413, 422])
    def test_verdicts_are_not(self, status: int) -> None:
        assert not is_retryable_status(status)


class TestRateLimiter:
    def test_bookings_are_spaced_by_the_rate(self) -> None:
        now = [100.0]
        limiter = RateLimiter(1000.0, clock=lambda: now[0])
        assert limiter.reserve(500) == 0.0  # the first chunk goes at once
        assert limiter.reserve(500) == pytest.approx(0.5)
        assert limiter.reserve(1000) == pytest.approx(1.0)
        now[0] = 105.0  # an idle spell does not build up a burst allowance beyond now
        assert limiter.reserve(1000) == 0.0
        assert limiter.reserve(1) == pytest.approx(1.0)

    def test_a_rate_must_be_positive(self) -> None:
        with pytest.raises(ValueError, match="positive"):
            RateLimiter(0)


class TestSseParser:
    def feed(self, text: str) -> list[SseEvent]:
        parser = SseParser()
        events = []
        for line in text.splitlines(keepends=True):
            event = parser.feed(line)
            if event is not None:
                events.append(event)
        return events

    def test_the_gateways_frames(self) -> None:
        events = self.feed(
            "retry: 2000\n\n"
            'id: 1\nevent: status\ndata: {"status":"pending"}\n\n'
            ": heartbeat\n\n"
            'id: 2\nevent: status\ndata: {"status":"uploaded"}\n\n'
        )
        assert [(e.event, e.id, e.data) for e in events] == [
            ("status", "1", '{"status":"pending"}'),
            ("status", "2", '{"status":"uploaded"}'),
        ]

    def test_multi_line_data_crlf_and_defaults(self) -> None:
        events = self.feed("data:a\r\ndata: b\r\n\r\n")
        assert [(e.event, e.data, e.id) for e in events] == [("message", "a\nb", None)]

    def test_the_last_id_carries_over(self) -> None:
        events = self.feed("id: 7\ndata: x\n\ndata: y\n\n")
        assert [e.id for e in events] == ["7", "7"]


def test_the_code_of_an_s3_error_document() -> None:
    body = b'<?xml version="1.0"?><Error><Code>AccessDenied</Code><Message>m</Message></Error>'
    assert _storage_code(body) == "AccessDenied"
    assert _storage_code(b"") == ""


class FakeGateway:
    """Answers signing requests after a delay, recording each batch (no network)."""

    def __init__(self, delay: float = 0.01, fail_first: bool = False) -> None:
        self.delay = delay
        self.batches: list[list[int]] = []
        self.checksums: dict[int, str] = {}
        self.fail_first = fail_first

    async def sign_parts(
        self, upload_id: str, numbers: Sequence[int], checksums: dict[int, str]
    ) -> list[SignedPart]:
        self.batches.append(list(numbers))
        self.checksums.update(checksums)
        await asyncio.sleep(self.delay)
        if self.fail_first and len(self.batches) == 1:
            raise GaveUp("signing failed")
        expires = datetime.now(UTC) + timedelta(minutes=15)
        return [SignedPart(n, f"https://s/{n}?v={len(self.batches)}", {}, expires) for n in numbers]


class TestPartSigner:
    async def test_parts_asking_together_are_signed_in_one_request(self) -> None:
        gateway = FakeGateway()
        signer = PartSigner(gateway, "u")  # type: ignore[arg-type]
        first = await asyncio.gather(*(signer.url(n, f"c{n}") for n in range(1, 6)))
        assert [s.number for s in first] == [1, 2, 3, 4, 5]
        assert gateway.batches == [[1, 2, 3, 4, 5]]
        assert gateway.checksums == {n: f"c{n}" for n in range(1, 6)}
        await signer.close()

    async def test_parts_asking_while_a_request_is_out_share_the_next_one(self) -> None:
        gateway = FakeGateway(delay=0.05)
        signer = PartSigner(gateway, "u")  # type: ignore[arg-type]
        first = asyncio.create_task(signer.url(1, "c1"))
        await asyncio.sleep(0.01)  # request 1 is out
        later = [asyncio.create_task(signer.url(n, f"c{n}")) for n in (2, 3, 4)]
        await asyncio.gather(first, *later)
        assert gateway.batches == [[1], [2, 3, 4]]
        await signer.close()

    async def test_urls_are_reused_until_renewed(self) -> None:
        gateway = FakeGateway()
        signer = PartSigner(gateway, "u")  # type: ignore[arg-type]
        a = await signer.url(1, "c1")
        b = await signer.url(1, "c1")
        c = await signer.url(1, "c1", renew=True)
        assert a is b
        assert c.url != a.url
        assert len(gateway.batches) == 2
        await signer.close()

    async def test_a_failed_request_fails_only_its_batch(self) -> None:
        gateway = FakeGateway(fail_first=True)
        signer = PartSigner(gateway, "u")  # type: ignore[arg-type]
        with pytest.raises(GaveUp):
            await signer.url(1, "c1")
        assert (await signer.url(1, "c1")).number == 1
        await signer.close()
