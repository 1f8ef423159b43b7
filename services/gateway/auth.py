"""Bearer JWT authentication: `sub` is the owner of every upload the request touches."""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from typing import Any

import jwt

from shared.problems import Unauthorized
from shared.settings import Settings

# Longest `sub` we accept: owners end up in database rows and log lines.
MAX_SUBJECT = 256
# Clock skew allowed when judging a token's lifetime (expiry itself is exact).
LEEWAY_SECONDS = 30
# Verified tokens remembered (by digest) until they expire; the least recently used
# are forgotten first. A browser sends the same token with every request.
CACHED_TOKENS = 10_000


class TokenVerifier:
    """Verifies tokens with exactly one configured algorithm; `alg: none` never passes."""

    def __init__(self, settings: Settings) -> None:
        self._algorithm = settings.jwt_algorithm
        self._key: Any = (
            settings.jwt_public_key
            if settings.jwt_algorithm == "RS256"
            else settings.jwt_secret.get_secret_value()
        )
        self._audience = settings.jwt_audience
        self._issuer = settings.jwt_issuer
        self._max_lifetime = settings.max_token_lifetime_seconds
        required = ["sub", "exp"]
        required += ["aud"] if self._audience else []
        required += ["iss"] if self._issuer else []
        self._required = required
        # sha256(token) → (subject, exp): only tokens that passed every check.
        self._verified: OrderedDict[bytes, tuple[str, float]] = OrderedDict()

    def owner(self, authorization: str | None) -> str:
        """The token's subject, or Unauthorized with a precise reason.

        A token that passed is remembered until its `exp` (checked exactly, as PyJWT
        does: valid while now < exp); an expired or never-seen one is verified in full,
        so every refusal keeps its precise reason.
        """
        if not authorization:
            raise Unauthorized("missing Authorization header; send 'Authorization: Bearer <JWT>'")
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise Unauthorized("Authorization must use the Bearer scheme")
        digest = hashlib.sha256(token.encode()).digest()
        known = self._verified.get(digest)
        if known is not None:
            if time.time() < known[1]:
                self._verified.move_to_end(digest)
                return known[0]
            del self._verified[digest]
        sub, exp = self._verify(token)
        self._verified[digest] = (sub, exp)
        if len(self._verified) > CACHED_TOKENS:
            self._verified.popitem(last=False)
        return sub

    def _verify(self, token: str) -> tuple[str, float]:
        try:
            claims = jwt.decode(
                token,
                self._key,
                algorithms=[self._algorithm],
                audience=self._audience,
                issuer=self._issuer,
                options={"require": self._required, "verify_aud": self._audience is not None},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthorized("token has expired") from None
        except jwt.InvalidTokenError as exc:
            raise Unauthorized(f"invalid token: {exc}") from None
        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub or len(sub) > MAX_SUBJECT:
            raise Unauthorized(f"token subject must be a string of 1..{MAX_SUBJECT} characters")
        if not sub.isprintable() or sub != sub.strip():
            raise Unauthorized("token subject must be printable, without surrounding spaces")
        exp = claims["exp"]
        if (
            not isinstance(exp, int | float)
            or exp - time.time() > self._max_lifetime + LEEWAY_SECONDS
        ):
            raise Unauthorized(
                f"token lifetime exceeds the maximum of {self._max_lifetime} seconds"
            )
        return sub, float(exp)


def mint_token(settings: Settings, subject: str, *, ttl_seconds: int = 3600) -> str:
    """A token for local use and tests; a negative TTL mints an already-expired token."""
    now = int(time.time())
    claims: dict[str, Any] = {"sub": subject, "iat": now, "exp": now + ttl_seconds}
    if settings.jwt_audience:
        claims["aud"] = settings.jwt_audience
    if settings.jwt_issuer:
        claims["iss"] = settings.jwt_issuer
    if settings.jwt_algorithm == "RS256":
        if settings.jwt_private_key is None:
            raise ValueError("RS256 tokens need CLEARANCE_JWT_PRIVATE_KEY to sign")
        return jwt.encode(claims, settings.jwt_private_key.get_secret_value(), algorithm="RS256")
    return jwt.encode(claims, settings.jwt_secret.get_secret_value(), algorithm="HS256")
