"""The pipeline's queues: who consumes which events.

Every service declares all of them at start (idempotently), so no event is ever
published before its queue exists. Names take `settings.queue_prefix`, so a test
run (or a second deployment on one broker) never consumes another's messages.
"""

from __future__ import annotations

from shared.amqp.topology import QueueSpec
from shared.settings import Settings


def recorder_queue(settings: Settings) -> QueueSpec:
    """The gateway's status recorder: every event that moves an upload's status."""
    return QueueSpec(
        f"{settings.queue_prefix}.recorder",
        ("object.created", "scan.*", "processing.*", "upload.failed"),
    )


def scanner_queue(settings: Settings) -> QueueSpec:
    """The scanner: objects that landed."""
    return QueueSpec(f"{settings.queue_prefix}.scanner", ("object.created",))


def processor_queue(settings: Settings) -> QueueSpec:
    """The processor: objects the scanner found clean."""
    return QueueSpec(f"{settings.queue_prefix}.processor", ("scan.clean",))


def all_queues(settings: Settings) -> tuple[QueueSpec, ...]:
    return (recorder_queue(settings), scanner_queue(settings), processor_queue(settings))
