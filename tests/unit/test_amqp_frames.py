"""The publisher's own frames are the bytes pamqp marshals, for every kind of message.

`shared.amqp.publisher` builds `basic.publish`, content header and body frames
itself (for speed); here each message's frames are compared with what aiormq's
`ChannelFrame.marshall` makes of pamqp's objects, as `Channel.basic_publish` sends
them, over many seeded random cases and the edges.
"""

from __future__ import annotations

import random
import string
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import aio_pika
import pytest
from aiormq.abc import ChannelFrame
from pamqp.body import ContentBody
from pamqp.commands import Basic
from pamqp.header import ContentHeader

from shared.amqp.publisher import JsonProperties, message_frames

MAX_SIZE = 131_072 - 8  # aiormq: the broker's frame_max less the frame's own bytes


def pamqp_frames(
    channel: int,
    exchange: str,
    routing_key: str,
    mandatory: bool,
    body: bytes,
    properties: Basic.Properties,
    max_size: int,
) -> bytes:
    """What `aiormq.Channel.basic_publish` writes for the message."""
    pieces: list[Any] = [
        Basic.Publish(exchange=exchange, routing_key=routing_key, mandatory=mandatory),
        ContentHeader(properties=properties, body_size=len(body)),
    ]
    if body:
        if len(body) < max_size:
            pieces.append(ContentBody(body))
        else:
            pieces += [ContentBody(body[i : i + max_size]) for i in range(0, len(body), max_size)]
    return ChannelFrame.marshall(channel_number=channel, frames=pieces).payload


def aio_pika_properties(props: JsonProperties) -> Basic.Properties:
    """The properties `aio_pika.Message` builds for the same event."""
    return aio_pika.Message(
        b"",
        headers=dict(props.headers),
        content_type="application/json",
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        message_id=props.message_id,
        correlation_id=props.correlation_id,
        type=props.message_type,
        timestamp=props.timestamp,
        app_id=props.app_id,
    ).properties


def text(rng: random.Random, longest: int) -> str:
    alphabet = string.ascii_letters + string.digits + ".-_ éü€✓"
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(0, longest)))


def exchange_name(rng: random.Random) -> str:
    alphabet = string.ascii_letters + string.digits + ".-_:"
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 100)))


def random_case(rng: random.Random) -> tuple[int, str, str, bool, bytes, JsonProperties]:
    headers: dict[str, Any] = {}
    for _ in range(rng.randint(0, 3)):
        headers[text(rng, 12) or "k"] = rng.choice(
            [text(rng, 40), rng.randint(-(2**40), 2**40), rng.random() < 0.5]
        )
    zone = rng.choice([UTC, timezone(timedelta(hours=rng.randint(-12, 12))), None])
    when = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(
        seconds=rng.randint(0, 10**8), microseconds=rng.randint(0, 999_999)
    )
    size = rng.choice([0, 1, rng.randint(2, 5000), MAX_SIZE - 1, MAX_SIZE, 2 * MAX_SIZE + 3])
    props = JsonProperties(
        message_id=text(rng, 60),
        correlation_id=rng.choice([None, "", text(rng, 80)]),
        message_type=text(rng, 30),
        timestamp=when.replace(tzinfo=None) if zone is None else when.astimezone(zone),
        app_id=text(rng, 20),
        headers=headers,
    )
    return (
        rng.randint(1, 2047),
        rng.choice(["", "clearance.notifications", exchange_name(rng)]),
        text(rng, 60),
        rng.random() < 0.5,
        rng.randbytes(size),
        props,
    )


def test_every_random_message_is_framed_as_pamqp_frames_it() -> None:
    rng = random.Random(20261201)
    for _ in range(400):
        channel, exchange, key, mandatory, body, props = random_case(rng)
        ours = message_frames(channel, exchange, key, mandatory, body, props, MAX_SIZE)
        theirs = pamqp_frames(
            channel, exchange, key, mandatory, body, aio_pika_properties(props), MAX_SIZE
        )
        assert ours == theirs, (channel, exchange, key, mandatory, len(body), props)
        # pamqp's own object for the same properties frames the same way too.
        assert ours == message_frames(
            channel, exchange, key, mandatory, body, aio_pika_properties(props), MAX_SIZE
        )


def test_a_relay_event_is_framed_as_pamqp_frames_it() -> None:
    props = JsonProperties(
        message_id="upload.created:9b5c1c6e-6f0e-4c7e-9d3a-0f6f1d9b2f10:1",
        correlation_id="req-1",
        message_type="upload.created",
        timestamp=datetime(2026, 12, 1, 19, 30, 5, 999_999, tzinfo=UTC),
        app_id="clearance-gateway",
        headers={"upload_id": "9b5c1c6e-6f0e-4c7e-9d3a-0f6f1d9b2f10"},
    )
    body = b'{"type": "upload.created"}'
    for mandatory in (False, True):
        args = (7, "clearance.notifications", "upload.created", mandatory, body)
        assert message_frames(*args, props, MAX_SIZE) == pamqp_frames(
            *args, aio_pika_properties(props), MAX_SIZE
        )


def test_a_property_over_255_bytes_is_refused_not_truncated() -> None:
    props = JsonProperties(
        message_id="é" * 128,  # 256 bytes
        correlation_id=None,
        message_type="t",
        timestamp=datetime.now(UTC),
        app_id="a",
        headers={},
    )
    with pytest.raises(ValueError, match="at most 255 bytes"):
        message_frames(1, "", "q", True, b"{}", props, MAX_SIZE)
