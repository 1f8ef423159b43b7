"""Object key naming, shared by every service that reads or writes storage.

Keys are server-generated: `<prefix>/<owner-hash>/<upload-uuid>`, never the user's
filename; derivatives sit beside the original.
"""

from __future__ import annotations

import hashlib
import uuid

# The object's user metadata (`x-amz-meta-clearance-profile`) that names its upload
# profile. The gateway signs it into every upload it opens (PUT URL, POST form,
# multipart create), so storage holds it exactly as recorded; the processor reads it
# to apply the profile's rules to the bytes.
PROFILE_METADATA = "clearance-profile"


def owner_hash(owner: str) -> str:
    """A short, stable, non-reversible owner label for object keys."""
    return hashlib.sha256(owner.encode()).hexdigest()[:16]


def object_key(prefix: str, owner: str, upload_id: uuid.UUID) -> str:
    """Server-generated key: `<prefix>/<owner-hash>/<uuid>`; never the user's filename."""
    return f"{prefix}/{owner_hash(owner)}/{upload_id}"


def upload_id_from_key(prefix: str, key: str) -> uuid.UUID | None:
    """The upload id in a key made by `object_key`, or None for any other key."""
    head, _, last = key.rpartition("/")
    key_prefix, _, owner = head.rpartition("/")
    if key_prefix != prefix or len(owner) != 16:
        return None
    try:
        parsed = uuid.UUID(last)
    except ValueError:
        return None
    # Only the canonical form: thumbnails (`<uuid>.thumb-…`) and variants don't match.
    return parsed if str(parsed) == last else None


def thumbnail_key(key: str, size: int) -> str:
    """Where the `size` px thumbnail of `key` is stored (beside the original)."""
    return f"{key}.thumb-{size}.webp"


def sidecar_key(key: str) -> str:
    """The processor's record of a finished job, written last (idempotency marker)."""
    return f"{key}.meta.json"


def quarantine_key(quarantine_prefix: str, key: str) -> str:
    """Where an infected object is moved; outside the uploads prefix, never served."""
    return f"{quarantine_prefix}/{key}"


def verified_key(verified_prefix: str, key: str) -> str:
    """Where the processor keeps the version it verified; downloads are served from here.

    No presigned URL ever names it, so a client that re-uses its upload URL after
    the scan can't replace what others download.
    """
    return f"{verified_prefix}/{key}"
