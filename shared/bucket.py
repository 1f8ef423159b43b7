"""What the upload bucket must look like, and the one idempotent call that makes it so.

Used by `clearance init` (deployments), the local stack and the tests: the bucket
exists, browsers may PUT/POST to it from the configured origins and read the ETag,
objects are encrypted by default, unencrypted PUTs are denied, and abandoned
multipart uploads are aborted by the storage's lifecycle where it enforces one
(the gateway's reconciler aborts them too, so nothing depends on that).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from shared.s3 import error_code
from shared.settings import Settings

SETUP_DEADLINE_S = 20.0


class BucketSetupError(Exception):
    """The bucket could not be set up; the message says why and what to check."""


def deny_unencrypted_puts_policy(bucket: str) -> dict[str, Any]:
    """Bucket policy refusing any object PUT (or copy) that does not ask for SSE-S3 (AES256).

    SeaweedFS authorises CompleteMultipartUpload and AbortMultipartUpload as
    s3:PutObject too, and they carry no encryption header: a plain
    "StringNotEquals AES256" deny makes every multipart upload impossible to
    finish or abort (403, measured on 4.48). Restricting the deny to the PUT
    method (SeaweedFS's `s3:RequestMethod` key) keeps both working; objects
    created by POST (multipart, forms) are encrypted by the bucket default.
    """
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "DenyUnencryptedObjectPuts",
                "Effect": "Deny",
                "Principal": "*",
                "Action": "s3:PutObject",
                "Resource": f"arn:aws:s3:::{bucket}/*",
                "Condition": {
                    "StringNotEquals": {"s3:x-amz-server-side-encryption": "AES256"},
                    "StringEquals": {"s3:RequestMethod": "PUT"},
                },
            }
        ],
    }


LIFECYCLE = {
    "Rules": [
        {
            "ID": "abort-incomplete-multipart-uploads",
            "Status": "Enabled",
            "Filter": {"Prefix": ""},
            "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 1},
        }
    ]
}

DEFAULT_ENCRYPTION = {"Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}]}


def cors_rules(settings: Settings) -> dict[str, Any]:
    """Browsers upload straight to S3 and need the ETag of each part back."""
    return {
        "CORSRules": [
            {
                "AllowedOrigins": list(settings.cors_origins),
                "AllowedMethods": ["GET", "PUT", "POST", "HEAD"],
                "AllowedHeaders": ["*"],
                "ExposeHeaders": ["ETag"],
                "MaxAgeSeconds": 3000,
            }
        ]
    }


def s3_client(settings: Settings, endpoint_url: str) -> Any:
    """A boto3 S3 client for the admin identity (path-style, SigV4, short timeouts)."""
    # Imported here: boto3 costs ~0.5 s, and `status`/`down` never need it.
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=endpoint_url,
        region_name=settings.s3_region,
        aws_access_key_id=settings.s3_access_key,
        aws_secret_access_key=settings.s3_secret_key.get_secret_value(),
        config=Config(
            signature_version="s3v4",
            s3={"addressing_style": "path"},
            connect_timeout=3,
            read_timeout=10,
            retries={"max_attempts": 2, "mode": "standard"},
        ),
    )


def configure_bucket(settings: Settings, s3_url: str | None = None) -> None:
    """Create the bucket if needed; apply CORS, default encryption, the SSE policy and
    the lifecycle rule. Idempotent: run it at every start of a deployment."""
    from botocore.exceptions import BotoCoreError, ClientError

    s3_url = s3_url or settings.s3_endpoint_url
    s3 = s3_client(settings, s3_url)
    bucket = settings.bucket
    try:
        try:
            _retrying(lambda: s3.head_bucket(Bucket=bucket))
        except ClientError as exc:
            if error_code(exc) not in ("404", "NoSuchBucket", "NotFound"):
                raise
            create: dict[str, Any] = {"Bucket": bucket}
            if settings.s3_region != "us-east-1":
                create["CreateBucketConfiguration"] = {"LocationConstraint": settings.s3_region}
            try:
                _retrying(lambda: s3.create_bucket(**create))
            except ClientError as race:
                if error_code(race) not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                    raise
        if settings.cors_origins:
            _retrying(
                lambda: s3.put_bucket_cors(Bucket=bucket, CORSConfiguration=cors_rules(settings))
            )
        else:
            _retrying(lambda: s3.delete_bucket_cors(Bucket=bucket))
        _retrying(
            lambda: s3.put_bucket_encryption(
                Bucket=bucket, ServerSideEncryptionConfiguration=DEFAULT_ENCRYPTION
            )
        )
        policy = json.dumps(deny_unencrypted_puts_policy(bucket))
        _retrying(lambda: s3.put_bucket_policy(Bucket=bucket, Policy=policy))
        _retrying(
            lambda: s3.put_bucket_lifecycle_configuration(
                Bucket=bucket, LifecycleConfiguration=LIFECYCLE
            )
        )
    except ClientError as exc:
        code = error_code(exc)
        if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403"):
            raise BucketSetupError(
                f"the S3 API on {s3_url} rejects CLEARANCE_S3_ACCESS_KEY/SECRET_KEY "
                f"({code}); it was started with other credentials: "
                "check CLEARANCE_S3_ACCESS_KEY and CLEARANCE_S3_SECRET_KEY"
            ) from exc
        raise BucketSetupError(f"setting up bucket {bucket!r} failed: {exc}") from exc
    except BotoCoreError as exc:
        raise BucketSetupError(f"setting up bucket {bucket!r} failed: {exc}") from exc
    finally:
        s3.close()


def _retrying(call: Callable[[], Any]) -> Any:
    """Run one S3 call, retrying while the freshly started filer is still warming up."""
    from botocore.exceptions import BotoCoreError, ClientError

    deadline = time.monotonic() + SETUP_DEADLINE_S
    while True:
        try:
            return call()
        except ClientError as exc:
            status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))
            if status < 500 or time.monotonic() > deadline:
                raise
        except BotoCoreError:
            if time.monotonic() > deadline:
                raise
        time.sleep(0.2)
