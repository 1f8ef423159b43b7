"""The outbox relay lingers longer only while it is busy, so a quiet stream stays prompt."""

from __future__ import annotations

from services.gateway.outbox import linger_seconds
from shared.settings import Settings


def test_a_quiet_relay_keeps_the_short_linger() -> None:
    settings = Settings()
    for published in (0, 1, settings.outbox_busy_events - 1):
        assert linger_seconds(settings, published) == settings.outbox_linger_seconds


def test_a_busy_relay_waits_for_a_fuller_pass() -> None:
    settings = Settings()
    busy = settings.outbox_busy_linger_seconds
    assert busy > settings.outbox_linger_seconds
    for published in (settings.outbox_busy_events, 10 * settings.outbox_busy_events):
        assert linger_seconds(settings, published) == busy


def test_the_busy_linger_never_shortens_the_configured_one() -> None:
    settings = Settings(outbox_linger_seconds=0.2, outbox_busy_linger_seconds=0.05)
    assert linger_seconds(settings, 10_000) == 0.2
    assert linger_seconds(Settings(outbox_busy_linger_seconds=0), 10_000) == 0.01
