"""Token verification: one configured algorithm, required claims, precise reasons."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from pydantic import SecretStr

from services.gateway.auth import TokenVerifier, mint_token
from shared.problems import Unauthorized
from shared.settings import Settings


def test_hs256_round_trip_and_expiry() -> None:
    settings = Settings()
    verifier = TokenVerifier(settings)
    assert verifier.owner(f"Bearer {mint_token(settings, 'alice')}") == "alice"
    with pytest.raises(Unauthorized, match="expired"):
        verifier.owner(f"Bearer {mint_token(settings, 'alice', ttl_seconds=-5)}")


def test_rs256_with_a_public_key_only() -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    public = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    settings = Settings(
        jwt_algorithm="RS256", jwt_public_key=public, jwt_private_key=SecretStr(private)
    )
    verifier = TokenVerifier(settings)
    assert verifier.owner(f"Bearer {mint_token(settings, 'bob')}") == "bob"
    # Algorithm confusion: an HS256 token whose HMAC secret is the public key's bytes,
    # which anyone has. A verifier that let the token pick the algorithm would accept it.
    forged = hs256_signed_with(public.encode(), {"sub": "mallory", "exp": int(time.time()) + 60})
    # Well-formed and unexpired: only the algorithm pinning can refuse it.
    assert jwt.get_unverified_header(forged)["alg"] == "HS256"
    assert jwt.decode(forged, options={"verify_signature": False})["sub"] == "mallory"
    with pytest.raises(Unauthorized):
        verifier.owner(f"Bearer {forged}")


def hs256_signed_with(secret: bytes, claims: dict[str, object]) -> str:
    """A JWT signed by hand (PyJWT refuses a PEM key as an HMAC secret, on purpose)."""

    def b64(raw: bytes) -> str:
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    header = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    signing_input = f"{header}.{b64(json.dumps(claims).encode())}"
    mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(mac)}"


@pytest.mark.parametrize(
    "claims", [{"exp": 9999999999}, {"sub": "a"}, {"sub": "", "exp": 9999999999}]
)
def test_required_claims(claims: dict[str, object]) -> None:
    settings = Settings()
    token = jwt.encode(claims, settings.jwt_secret.get_secret_value(), algorithm="HS256")
    with pytest.raises(Unauthorized):
        TokenVerifier(settings).owner(f"Bearer {token}")


def test_a_verified_token_is_remembered_until_it_expires_exactly(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = Settings()
    verifier = TokenVerifier(settings)
    token = mint_token(settings, "alice", ttl_seconds=60)
    exp = jwt.decode(token, options={"verify_signature": False})["exp"]
    assert verifier.owner(f"Bearer {token}") == "alice"
    decoded: list[str] = []
    real_decode = jwt.decode

    def counting(*args: object, **kwargs: object) -> object:
        decoded.append("x")
        return real_decode(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(jwt, "decode", counting)
    clock = [exp - 0.001]
    monkeypatch.setattr(time, "time", lambda: clock[0])
    assert verifier.owner(f"bearer  {token} ") == "alice"
    assert decoded == []  # from the cache
    # PyJWT: expired once now >= exp. At that instant the cache no longer answers: the
    # token is verified in full again (PyJWT reads its own clock, still before exp here).
    clock[0] = exp
    assert verifier.owner(f"Bearer {token}") == "alice"
    assert decoded == ["x"]


def test_refusals_are_never_remembered_and_the_cache_is_bounded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from services.gateway import auth

    monkeypatch.setattr(auth, "CACHED_TOKENS", 3)
    settings = Settings()
    verifier = TokenVerifier(settings)
    bad = jwt.encode({"sub": "x", "exp": int(time.time()) + 60}, "w" * 32, algorithm="HS256")
    for _ in range(2):
        with pytest.raises(Unauthorized, match="invalid token"):
            verifier.owner(f"Bearer {bad}")
    tokens = [mint_token(settings, f"user-{i}") for i in range(5)]
    for i, token in enumerate(tokens):
        assert verifier.owner(f"Bearer {token}") == f"user-{i}"
    assert len(verifier._verified) == 3
