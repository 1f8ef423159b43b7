"""The pipeline's queues: who consumes which events. Every service declares all of
them at start (idempotently), so no event is ever published before its queue exists."""

from __future__ import annotations

from shared.amqp.topology import QueueSpec

# The gateway's status recorder: every event that moves an upload's status.
RECORDER = QueueSpec(
    "clearance.recorder",
    ("object.created", "scan.*", "processing.*", "upload.failed"),
)
# The scanner: objects that landed.
SCANNER = QueueSpec("clearance.scanner", ("object.created",))
# The processor: objects the scanner found clean.
PROCESSOR = QueueSpec("clearance.processor", ("scan.clean",))

QUEUES: tuple[QueueSpec, ...] = (RECORDER, SCANNER, PROCESSOR)
