"""The upload statuses and their state machine (DESIGN §3): pure rules, no I/O.

The one list of statuses: the gateway's records and OpenAPI document, the CLI and
the tests all take it from here (the browser module's copy is checked against
`/openapi.json` by a test).

Transitions are monotonic: every status has a rank and an upload only ever moves to
a higher rank, never out of a final state. A duplicate or late event therefore can't
move an upload backwards, whatever order messages arrive in.
"""

from __future__ import annotations

from enum import StrEnum


class Status(StrEnum):
    """Where an upload stands; `final` ones never change again."""

    PENDING = "pending"
    UPLOADING = "uploading"
    UPLOADED = "uploaded"
    SCANNING = "scanning"
    PROCESSING = "processing"
    READY = "ready"
    INFECTED = "infected"
    REJECTED = "rejected"
    FAILED = "failed"
    EXPIRED = "expired"
    ABORTED = "aborted"

    @property
    def final(self) -> bool:
        return self in FINAL

    @property
    def rank(self) -> int:
        return _RANK[self]


FINAL = frozenset(
    {Status.READY, Status.INFECTED, Status.REJECTED, Status.FAILED, Status.EXPIRED, Status.ABORTED}
)
# The bytes are in storage (and the pipeline has them, or had them).
LANDED = frozenset(
    {
        Status.UPLOADED,
        Status.SCANNING,
        Status.PROCESSING,
        Status.READY,
        Status.INFECTED,
        Status.REJECTED,
        Status.FAILED,
    }
)

_RANK = {
    Status.PENDING: 0,
    Status.UPLOADING: 1,
    Status.UPLOADED: 2,
    Status.SCANNING: 3,
    Status.PROCESSING: 4,
    **{s: 10 for s in FINAL},
}

# Expiry and abort only apply before the bytes have landed; later on, a user's DELETE
# removes the upload instead.
BEFORE_LANDING = frozenset({Status.PENDING, Status.UPLOADING})


def can_transition(current: Status, to: Status) -> bool:
    """Whether `current → to` is a forward move of the state machine."""
    if current.final or to.rank <= current.rank:
        return False
    if to in (Status.EXPIRED, Status.ABORTED):
        return current in BEFORE_LANDING
    return True
