"""`clearance stack`: the local components are up, locked down and configured.

Runs against the real stack. `stack_up` is called once first (idempotent: it
only starts what is missing), so this module also works on its own.
"""

from __future__ import annotations

import io
import json
import os
import socket
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from devstack import HttpProbe, ManagedProcess, stack_down, stack_status, stack_up
from devstack.commands import stack_states
from devstack.layout import StackLayout
from devstack.processes import PidRecord, stop_process, write_record
from shared.settings import Settings

pytestmark = pytest.mark.integration

# A throwaway HTTP server standing in for an app service (below 32768, unused by Clearance).
FAKE_APP_PORT = 18791


@pytest.fixture(scope="module")
def stack_settings() -> Settings:
    return Settings(environment="test")


@pytest.fixture(scope="module", autouse=True)
def stack_is_up(stack_settings: Settings) -> None:
    out, err = io.StringIO(), io.StringIO()
    rc = stack_up(stack_settings, with_services=False, out=out, err=err)
    assert rc == 0, out.getvalue() + err.getvalue()


def _s3(settings: Settings, secret: str | None = None) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=settings.s3_endpoint_url,
        region_name=settings.s3_region,
        aws_access_key_id=settings.s3_access_key,
        aws_secret_access_key=secret or settings.s3_secret_key.get_secret_value(),
        config=Config(
            signature_version="s3v4",
            s3={"addressing_style": "path"},
            retries={"max_attempts": 1},
        ),
    )


@pytest.fixture
def s3(stack_settings: Settings) -> Iterator[Any]:
    client = _s3(stack_settings)
    yield client
    client.close()


@pytest.fixture
def key(s3: Any, stack_settings: Settings) -> Iterator[str]:
    """A unique object key, deleted (with any unfinished multipart upload) afterwards."""
    name = f"stack-test/{uuid.uuid4()}"
    yield name
    bucket = stack_settings.bucket
    for upload in s3.list_multipart_uploads(Bucket=bucket, Prefix=name).get("Uploads", []):
        s3.abort_multipart_upload(Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"])
    s3.delete_object(Bucket=bucket, Key=name)


def _http(method: str, url: str, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    request = urllib.request.Request(url, method=method, headers=headers or {})  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310
            return int(response.status), response.headers
    except urllib.error.HTTPError as exc:
        exc.close()
        return int(exc.code), exc.headers


def _error_code(exc: pytest.ExceptionInfo[ClientError]) -> str:
    return str(exc.value.response["Error"]["Code"])


def test_anonymous_requests_are_refused(stack_settings: Settings) -> None:
    base = stack_settings.s3_endpoint_url
    assert _http("GET", f"{base}/")[0] == 403
    assert _http("GET", f"{base}/{stack_settings.bucket}")[0] == 403
    assert _http("PUT", f"{base}/{stack_settings.bucket}/anonymous")[0] == 403


def test_a_wrong_secret_is_refused(stack_settings: Settings) -> None:
    client = _s3(stack_settings, secret="not-the-secret")
    try:
        with pytest.raises(ClientError) as exc:
            client.list_objects_v2(Bucket=stack_settings.bucket, MaxKeys=1)
        assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    finally:
        client.close()


def test_the_upload_bucket_exists(s3: Any, stack_settings: Settings) -> None:
    names = [b["Name"] for b in s3.list_buckets()["Buckets"]]
    assert stack_settings.bucket in names


def test_cors_lets_browsers_read_the_etag(s3: Any, stack_settings: Settings) -> None:
    rules = s3.get_bucket_cors(Bucket=stack_settings.bucket)["CORSRules"]
    assert rules[0]["ExposeHeaders"] == ["ETag"]
    assert set(rules[0]["AllowedOrigins"]) == set(stack_settings.cors_origins)

    origin = stack_settings.cors_origins[0]
    status, headers = _http(
        "OPTIONS",
        f"{stack_settings.s3_endpoint_url}/{stack_settings.bucket}/some-key",
        {
            "Origin": origin,
            "Access-Control-Request-Method": "PUT",
            "Access-Control-Request-Headers": "content-type,x-amz-server-side-encryption",
        },
    )
    assert status == 200
    assert headers["Access-Control-Allow-Origin"] == origin
    assert "ETag" in headers["Access-Control-Expose-Headers"]

    status, _ = _http(
        "OPTIONS",
        f"{stack_settings.s3_endpoint_url}/{stack_settings.bucket}/some-key",
        {"Origin": "https://evil.example", "Access-Control-Request-Method": "PUT"},
    )
    assert status == 403


def test_an_unencrypted_put_is_denied_even_with_credentials(
    s3: Any, stack_settings: Settings, key: str
) -> None:
    bucket = stack_settings.bucket
    with pytest.raises(ClientError) as exc:
        s3.put_object(Bucket=bucket, Key=key, Body=b"plain")
    assert _error_code(exc) == "AccessDenied"
    with pytest.raises(ClientError) as exc:
        s3.put_object(Bucket=bucket, Key=key, Body=b"plain", ServerSideEncryption="aws:kms")
    assert _error_code(exc) == "AccessDenied"

    answer = s3.put_object(Bucket=bucket, Key=key, Body=b"sealed", ServerSideEncryption="AES256")
    assert answer["ResponseMetadata"]["HTTPStatusCode"] == 200
    assert s3.head_object(Bucket=bucket, Key=key)["ServerSideEncryption"] == "AES256"


def test_an_unencrypted_copy_is_denied(s3: Any, stack_settings: Settings, key: str) -> None:
    bucket = stack_settings.bucket
    s3.put_object(Bucket=bucket, Key=key, Body=b"x", ServerSideEncryption="AES256")
    source = {"Bucket": bucket, "Key": key}
    with pytest.raises(ClientError) as exc:
        s3.copy_object(Bucket=bucket, Key=key, CopySource=source, MetadataDirective="REPLACE")
    assert _error_code(exc) == "AccessDenied"


def test_multipart_uploads_complete_and_abort_under_the_policy(
    s3: Any, stack_settings: Settings, key: str
) -> None:
    # Complete and Abort carry no encryption header; the policy must not block them.
    bucket = stack_settings.bucket
    upload = s3.create_multipart_upload(Bucket=bucket, Key=key, ServerSideEncryption="AES256")
    part = s3.upload_part(
        Bucket=bucket, Key=key, UploadId=upload["UploadId"], PartNumber=1, Body=b"p" * 1024
    )
    s3.complete_multipart_upload(
        Bucket=bucket,
        Key=key,
        UploadId=upload["UploadId"],
        MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": part["ETag"]}]},
    )
    head = s3.head_object(Bucket=bucket, Key=key)
    assert head["ContentLength"] == 1024
    assert head["ServerSideEncryption"] == "AES256"

    other = s3.create_multipart_upload(Bucket=bucket, Key=key, ServerSideEncryption="AES256")
    s3.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=other["UploadId"])
    with pytest.raises(ClientError) as exc:
        s3.list_parts(Bucket=bucket, Key=key, UploadId=other["UploadId"])
    assert _error_code(exc) == "NoSuchUpload"


def test_objects_without_an_encryption_header_are_encrypted_by_default(
    s3: Any, stack_settings: Settings, key: str
) -> None:
    # A multipart upload started without the header is still stored with SSE-S3.
    bucket = stack_settings.bucket
    upload = s3.create_multipart_upload(Bucket=bucket, Key=key)
    part = s3.upload_part(
        Bucket=bucket, Key=key, UploadId=upload["UploadId"], PartNumber=1, Body=b"q"
    )
    s3.complete_multipart_upload(
        Bucket=bucket,
        Key=key,
        UploadId=upload["UploadId"],
        MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": part["ETag"]}]},
    )
    assert s3.head_object(Bucket=bucket, Key=key)["ServerSideEncryption"] == "AES256"


def test_clamd_answers_ping(stack_settings: Settings) -> None:
    address = (stack_settings.clamd_host, stack_settings.clamd_port)
    with socket.create_connection(address, timeout=5) as conn:
        conn.sendall(b"zPING\0")
        assert conn.recv(16) == b"PONG\0"


def test_status_reports_every_component_up(stack_settings: Settings) -> None:
    out = io.StringIO()
    assert stack_status(stack_settings, with_services=False, out=out) == 0
    table = out.getvalue()
    for name in ("postgresql", "rabbitmq", "seaweedfs", "clamd"):
        assert any(line.split()[:2] == [name, "up"] for line in table.splitlines()), table


def test_stack_up_again_is_idempotent_and_fast(stack_settings: Settings) -> None:
    before = {s.name: s.pid for s in stack_states(stack_settings, with_services=False)}
    started = time.monotonic()
    out, err = io.StringIO(), io.StringIO()
    rc = stack_up(stack_settings, with_services=False, out=out, err=err)
    elapsed = time.monotonic() - started
    assert rc == 0, err.getvalue()
    assert elapsed < 3.0, out.getvalue()
    assert "started" not in out.getvalue()
    after = {s.name: s.pid for s in stack_states(stack_settings, with_services=False)}
    assert after == before


# --- app services: started after the infrastructure, stopped by `down`, only ours ---


@pytest.fixture
def isolated(tmp_path: Path, stack_settings: Settings) -> Settings:
    """The same (running) infrastructure seen from a fresh state dir: all of it external."""
    return stack_settings.model_copy(update={"state_dir": tmp_path / "state"})


def _fake_app(port: int = FAKE_APP_PORT) -> ManagedProcess:
    return ManagedProcess(
        name="fake-app",
        argv=(sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"),
        probe=HttpProbe(f"http://127.0.0.1:{port}/"),
        ready_timeout=15.0,
        stop_timeout=5.0,
    )


def test_app_services_start_report_and_stop(isolated: Settings) -> None:
    app = _fake_app()
    out, err = io.StringIO(), io.StringIO()
    assert stack_up(isolated, services=[app], out=out, err=err) == 0, err.getvalue()
    try:
        assert app.probe is not None
        assert app.probe.check()
        states = {s.name: s for s in stack_states(isolated, services=[app])}
        assert states["fake-app"].up
        assert states["fake-app"].owner == "us"
        # Seen from this state dir, the infrastructure was started by someone else.
        assert states["seaweedfs"].owner == "external"
        record = json.loads((StackLayout.from_settings(isolated).pid_file("fake-app")).read_text())
        assert record["pid"] == states["fake-app"].pid
    finally:
        assert stack_down(isolated, services=[app], out=out, err=err) == 0, err.getvalue()
    assert not app.probe.check()
    # `down` left everything it did not start running.
    assert all(s.up for s in stack_states(isolated, with_services=False))


def test_a_broken_app_service_does_not_take_the_infrastructure_down(isolated: Settings) -> None:
    missing = ManagedProcess(
        name="missing", argv=("/nonexistent/clearance", "gateway"), missing_hint="pip install -e ."
    )
    crashing = ManagedProcess(
        name="crashing",
        argv=(sys.executable, "-c", "import sys; print('no such subcommand'); sys.exit(2)"),
        probe=HttpProbe("http://127.0.0.1:18792/"),
    )
    out, err = io.StringIO(), io.StringIO()
    assert stack_up(isolated, services=[missing, crashing], out=out, err=err) == 1
    report = err.getvalue()
    assert "/nonexistent/clearance not found: pip install -e ." in report
    assert "crashing exited with code 2" in report
    assert "no such subcommand" in report  # the log tail explains why
    assert "seaweedfs" in out.getvalue()  # infrastructure came up regardless
    assert all(s.up for s in stack_states(isolated, with_services=False))


def test_down_never_signals_a_process_it_did_not_start(isolated: Settings) -> None:
    layout = StackLayout.from_settings(isolated)
    layout.ensure()
    app = _fake_app()
    # A stale record naming a live pid (this test process) with another start time.
    write_record(
        layout.pid_file(app.name),
        PidRecord(pid=os.getpid(), start_ticks=1, argv=app.argv),
    )
    assert stop_process(app, layout) == "not running"
    assert not layout.pid_file(app.name).exists()
