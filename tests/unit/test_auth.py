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
