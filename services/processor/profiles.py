"""Which upload profile's rules apply to an object, and what they ask of an image.

The gateway signs the upload's profile into every way of uploading it (the PUT
URL's signed `x-amz-meta-clearance-profile` header, the POST form's policy, the
multipart create), so storage holds it exactly as the gateway recorded it and the
processor reads it from the object's HEAD — no database lookup, no field a client
could change. An object without it (uploaded before profiles travelled with
objects) or naming a profile this processor does not know gets the default
profile's rules.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from services.processor.imaging import ImagePolicy
from shared.keys import PROFILE_METADATA
from shared.settings import Settings, UploadPolicy


@dataclass(frozen=True)
class Profile:
    """The profile whose rules apply; `recorded` is False when it is the fallback."""

    name: str
    policy: UploadPolicy
    recorded: bool


def profile_of(settings: Settings, metadata: Mapping[str, str] | None) -> Profile:
    """The profile named by an object's user metadata, else the default profile."""
    name = (metadata or {}).get(PROFILE_METADATA)
    policy = settings.profiles.get(name) if name else None
    if name and policy is not None:
        return Profile(name, policy, recorded=True)
    default = settings.default_profile
    return Profile(default, settings.profiles[default], recorded=False)


def image_policy(policy: UploadPolicy) -> ImagePolicy:
    """The structural rules an upload profile sets for images (picklable, for the pool)."""
    return ImagePolicy(
        max_frames=policy.max_frames,
        max_metadata_bytes=policy.max_metadata_bytes,
        trailing_data=policy.trailing_data,
    )
