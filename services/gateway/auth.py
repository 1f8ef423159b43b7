"""Bearer JWT authentication: `sub` is the owner of every upload the request touches."""

from __future__ import annotations

import time
from typing import Any

import jwt

from shared.problems import Unauthorized
from shared.settings import Settings

# Longest `sub` we accept: owners end up in database rows and log lines.
MAX_SUBJECT = 256
# Clock skew allowed when judging a token's lifetime (expiry itself is exact).
LEEWAY_SECONDS = 30


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

    def owner(self, authorization: str | None) -> str:
        """The token's subject, or Unauthorized with a precise reason."""
        if not authorization:
            raise Unauthorized("missing Authorization header; send 'Authorization: Bearer <JWT>'")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized("Authorization must use the Bearer scheme")
        try:
            claims = jwt.decode(
                token.strip(),
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
        return sub


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
