"""The relay's notification formats: real bodies captured from SeaweedFS 4.48, AWS/MinIO shapes.

The SeaweedFS captures were recorded from the local stack (a PUT, a multipart
upload, a thumbnail, odd keys, a tagging change, deletes); only the SSE key
material in them is replaced by `UkVEQUNURUQ=` (base64 of "REDACTED").
"""

from __future__ import annotations

import base64
import json
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus

import pytest

from services.relay.catchup import (
    READ_MARGIN_NS,
    SECOND_NS,
    CursorFile,
    filer_address,
    meta_tail_command,
)
from services.relay.formats import (
    Ignored,
    MalformedNotification,
    MetaLogDecoder,
    Outcome,
    Scope,
    parse_meta_log_event,
    parse_s3_event,
    parse_seaweedfs_webhook,
)
from shared.events import ObjectCreated
from shared.settings import Settings

SCOPE = Scope(bucket="clearance-uploads", upload_prefix="uploads")
OWNER = "5f2b7c0e9a1d3c48"
PUT_ID = uuid.UUID("6f1c2d3e-4b5a-4c7d-8e9f-0a1b2c3d4e5f")
PUT_KEY = f"uploads/{OWNER}/{PUT_ID}"
PUT_ETAG = "5eb63bbbe01eeed093cb22bb8f5acdc3"  # what S3 answered to the PUT
MULTIPART_ID = uuid.UUID("7a8b9c0d-1e2f-4a3b-9c4d-5e6f7a8b9c0d")
MULTIPART_KEY = f"uploads/{OWNER}/{MULTIPART_ID}"
MULTIPART_ETAG = "8b0be7847da5564ae08e97af63b60885-2"  # what S3 answered to Complete
MULTIPART_SIZE = 5 * 1024 * 1024 + 10

# One SeaweedFS webhook body per line, in the order they arrived: PUT, its new
# directory, CreateMultipartUpload, part 1, part 2, Complete, a thumbnail, a key
# with a space, a plus and an é, an empty object, PutObjectTagging on the PUT.
WEBHOOK_CAPTURE = r"""
{"event_type":"create","key":"/buckets/clearance-uploads/uploads/5f2b7c0e9a1d3c48/6f1c2d3e-4b5a-4c7d-8e9f-0a1b2c3d4e5f","message":{"new_entry":{"name":"6f1c2d3e-4b5a-4c7d-8e9f-0a1b2c3d4e5f","chunks":[{"size":11,"modified_ts_ns":1795776849664253427,"e_tag":"APIzScdG+zrFk/ehQmzFZA==","fid":{"volume_id":2,"file_key":228,"cookie":2548313816},"sse_type":3,"sse_metadata":"UkVEQUNURUQ="}],"attributes":{"file_size":11,"mtime":1795776849,"file_mode":432,"crtime":1795776849,"mime":"image/png","md5":"XrY7u+Ae7tCTyyK7j1rNww==","inode":6375600199916478666,"ctime":1795776849,"atime":1795776849},"extended":{"Seaweed-X-Amz-ETag":"NWViNjNiYmJlMDFlZWVkMDkzY2IyMmJiOGY1YWNkYzM=","Seaweed-X-Amz-Owner":"Y2xlYXJhbmNl","X-Amz-Server-Side-Encryption":"QUVTMjU2","x-seaweedfs-checksum-algorithm":"WC1BbXotQ2hlY2tzdW0tQ3JjMzI=","x-seaweedfs-checksum-value":"RFVvUmhRPT0=","x-seaweedfs-sse-s3-key":"UkVEQUNURUQ="}},"delete_chunks":true,"new_parent_path":"/buckets/clearance-uploads/uploads/5f2b7c0e9a1d3c48","signatures":[611515178]}}
{"event_type":"create","key":"/buckets/clearance-uploads/uploads/5f2b7c0e9a1d3c48","message":{"new_entry":{"name":"5f2b7c0e9a1d3c48","is_directory":true,"attributes":{"mtime":1795776849,"file_mode":2147484153,"crtime":1795776849,"inode":8791221494015508384,"ctime":-62135596800,"mtime_ns":664794807}},"new_parent_path":"/buckets/clearance-uploads/uploads","signatures":[611515178]}}
{"event_type":"create","key":"/buckets/clearance-uploads/.uploads/c4a1f4a08bbe37ed8b79a6b6e9f5d28bffa9da57_3f2da5b4cc6a486899f4e3fa098d17c8","message":{"new_entry":{"name":"c4a1f4a08bbe37ed8b79a6b6e9f5d28bffa9da57_3f2da5b4cc6a486899f4e3fa098d17c8","is_directory":true,"attributes":{"mtime":1795776849,"file_mode":2147484159,"crtime":1795776849,"mime":"image/png","inode":7577820113099527380,"ctime":1795776849,"atime":1795776849},"extended":{"Seaweed-X-Amz-Owner":"Y2xlYXJhbmNl","key":"dXBsb2Fkcy81ZjJiN2MwZTlhMWQzYzQ4LzdhOGI5YzBkLTFlMmYtNGEzYi05YzRkLTVlNmY3YThiOWMwZA==","x-seaweedfs-sse-s3-base-iv":"UkVEQUNURUQ=","x-seaweedfs-sse-s3-encryption":"UkVEQUNURUQ=","x-seaweedfs-sse-s3-key-data":"UkVEQUNURUQ="}},"delete_chunks":true,"new_parent_path":"/buckets/clearance-uploads/.uploads","signatures":[611515178]}}
{"event_type":"create","key":"/buckets/clearance-uploads/.uploads/c4a1f4a08bbe37ed8b79a6b6e9f5d28bffa9da57_3f2da5b4cc6a486899f4e3fa098d17c8/0001_184f0c07-dd17-4bc2-9529-92139ce35bdf.part","message":{"new_entry":{"name":"0001_184f0c07-dd17-4bc2-9529-92139ce35bdf.part","chunks":[{"size":4194304,"modified_ts_ns":1795776849796978329,"e_tag":"uLp1VwvBazt45ZXxNRYTlA==","fid":{"volume_id":2,"file_key":229,"cookie":572019840},"sse_type":3,"sse_metadata":"UkVEQUNURUQ="},{"offset":4194304,"size":1048576,"modified_ts_ns":1795776849768130170,"e_tag":"P28brqIHo/v3UJ2jfvAtYA==","fid":{"volume_id":2,"file_key":230,"cookie":3231433995},"sse_type":3,"sse_metadata":"UkVEQUNURUQ="}],"attributes":{"file_size":5242880,"mtime":1795776849,"file_mode":432,"crtime":1795776849,"mime":"text/plain; charset=utf-8","md5":"ebKBBg0ze5srhMzzkK3PdA==","inode":5768528334568786447,"ctime":1795776849,"atime":1795776849},"extended":{"Seaweed-X-Amz-ETag":"NzliMjgxMDYwZDMzN2I5YjJiODRjY2YzOTBhZGNmNzQ=","Seaweed-X-Amz-Owner":"Y2xlYXJhbmNl","X-Amz-Server-Side-Encryption":"QUVTMjU2","x-seaweedfs-checksum-algorithm":"WC1BbXotQ2hlY2tzdW0tQ3JjMzI=","x-seaweedfs-checksum-value":"ci96QmJ3PT0=","x-seaweedfs-sse-s3-key":"UkVEQUNURUQ="}},"delete_chunks":true,"new_parent_path":"/buckets/clearance-uploads/.uploads/c4a1f4a08bbe37ed8b79a6b6e9f5d28bffa9da57_3f2da5b4cc6a486899f4e3fa098d17c8","signatures":[611515178]}}
{"event_type":"create","key":"/buckets/clearance-uploads/.uploads/c4a1f4a08bbe37ed8b79a6b6e9f5d28bffa9da57_3f2da5b4cc6a486899f4e3fa098d17c8/0002_91db8cfb-b265-40f7-8c98-91f360832661.part","message":{"new_entry":{"name":"0002_91db8cfb-b265-40f7-8c98-91f360832661.part","chunks":[{"size":10,"modified_ts_ns":1795776849803597745,"e_tag":"hVpaDj8aX/y9M6AsND7K1w==","fid":{"volume_id":2,"file_key":231,"cookie":649058295},"sse_type":3,"sse_metadata":"UkVEQUNURUQ="}],"attributes":{"file_size":10,"mtime":1795776849,"file_mode":432,"crtime":1795776849,"md5":"ghNrQkDWzk6n0D5RRpo5Ow==","inode":10817828233494986743,"ctime":1795776849,"atime":1795776849},"extended":{"Seaweed-X-Amz-ETag":"ODIxMzZiNDI0MGQ2Y2U0ZWE3ZDAzZTUxNDY5YTM5M2I=","Seaweed-X-Amz-Owner":"Y2xlYXJhbmNl","X-Amz-Server-Side-Encryption":"QUVTMjU2","x-seaweedfs-checksum-algorithm":"WC1BbXotQ2hlY2tzdW0tQ3JjMzI=","x-seaweedfs-checksum-value":"UWk5TStBPT0=","x-seaweedfs-sse-s3-key":"UkVEQUNURUQ="}},"delete_chunks":true,"new_parent_path":"/buckets/clearance-uploads/.uploads/c4a1f4a08bbe37ed8b79a6b6e9f5d28bffa9da57_3f2da5b4cc6a486899f4e3fa098d17c8","signatures":[611515178]}}
{"event_type":"create","key":"/buckets/clearance-uploads/uploads/5f2b7c0e9a1d3c48/7a8b9c0d-1e2f-4a3b-9c4d-5e6f7a8b9c0d","message":{"new_entry":{"name":"7a8b9c0d-1e2f-4a3b-9c4d-5e6f7a8b9c0d","chunks":[{"size":4194304,"modified_ts_ns":1795776849796978329,"e_tag":"uLp1VwvBazt45ZXxNRYTlA==","fid":{"volume_id":2,"file_key":229,"cookie":572019840},"sse_type":3,"sse_metadata":"UkVEQUNURUQ="},{"offset":4194304,"size":1048576,"modified_ts_ns":1795776849768130170,"e_tag":"P28brqIHo/v3UJ2jfvAtYA==","fid":{"volume_id":2,"file_key":230,"cookie":3231433995},"sse_type":3,"sse_metadata":"UkVEQUNURUQ="},{"offset":5242880,"size":10,"modified_ts_ns":1795776849803597745,"e_tag":"hVpaDj8aX/y9M6AsND7K1w==","fid":{"volume_id":2,"file_key":231,"cookie":649058295},"sse_type":3,"sse_metadata":"UkVEQUNURUQ="}],"attributes":{"file_size":5242890,"mtime":1795776849,"file_mode":504,"crtime":1795776849,"mime":"image/png","inode":338550376574713961,"ctime":1795776849,"atime":1795776849},"extended":{"Seaweed-X-Amz-ETag":"OGIwYmU3ODQ3ZGE1NTY0YWUwOGU5N2FmNjNiNjA4ODUtMg==","Seaweed-X-Amz-Owner":"Y2xlYXJhbmNl","X-Amz-Server-Side-Encryption":"QUVTMjU2","X-Seaweedfs-Multipart-Part-Boundaries":"W3sicGFydCI6MSwic3RhcnQiOjAsImVuZCI6MiwiZXRhZyI6IlwiNzliMjgxMDYwZDMzN2I5YjJiODRjY2YzOTBhZGNmNzRcIiIsImVuZE9mZnNldCI6NTI0Mjg4MH0seyJwYXJ0IjoyLCJzdGFydCI6MiwiZW5kIjozLCJldGFnIjoiXCI4MjEzNmI0MjQwZDZjZTRlYTdkMDNlNTE0NjlhMzkzYlwiIiwic3RhcnRPZmZzZXQiOjUyNDI4ODAsImVuZE9mZnNldCI6NTI0Mjg5MH1d","X-Seaweedfs-Multipart-Parts-Count":"Mg==","X-Seaweedfs-Upload-Id":"YzRhMWY0YTA4YmJlMzdlZDhiNzlhNmI2ZTlmNWQyOGJmZmE5ZGE1N18zZjJkYTViNGNjNmE0ODY4OTlmNGUzZmEwOThkMTdjOA==","x-seaweedfs-sse-s3-base-iv":"UkVEQUNURUQ=","x-seaweedfs-sse-s3-encryption":"UkVEQUNURUQ=","x-seaweedfs-sse-s3-key":"UkVEQUNURUQ=","x-seaweedfs-sse-s3-key-data":"UkVEQUNURUQ="}},"delete_chunks":true,"new_parent_path":"/buckets/clearance-uploads/uploads/5f2b7c0e9a1d3c48","signatures":[611515178]}}
{"event_type":"create","key":"/buckets/clearance-uploads/uploads/5f2b7c0e9a1d3c48/6f1c2d3e-4b5a-4c7d-8e9f-0a1b2c3d4e5f.thumb-256.webp","message":{"new_entry":{"name":"6f1c2d3e-4b5a-4c7d-8e9f-0a1b2c3d4e5f.thumb-256.webp","chunks":[{"size":5,"modified_ts_ns":1795776849815707393,"e_tag":"neUP9MOb5e0dFTbTSHGjJQ==","fid":{"volume_id":2,"file_key":232,"cookie":3252134537},"sse_type":3,"sse_metadata":"UkVEQUNURUQ="}],"attributes":{"file_size":5,"mtime":1795776849,"file_mode":432,"crtime":1795776849,"mime":"text/plain; charset=utf-8","md5":"8SEFFGEpaW1qfg7VIdsuSA==","inode":16738685371012558000,"ctime":1795776849,"atime":1795776849},"extended":{"Seaweed-X-Amz-ETag":"ZjEyMTA1MTQ2MTI5Njk2ZDZhN2UwZWQ1MjFkYjJlNDg=","Seaweed-X-Amz-Owner":"Y2xlYXJhbmNl","X-Amz-Server-Side-Encryption":"QUVTMjU2","x-seaweedfs-checksum-algorithm":"WC1BbXotQ2hlY2tzdW0tQ3JjMzI=","x-seaweedfs-checksum-value":"RlRmUjJ3PT0=","x-seaweedfs-sse-s3-key":"UkVEQUNURUQ="}},"delete_chunks":true,"new_parent_path":"/buckets/clearance-uploads/uploads/5f2b7c0e9a1d3c48","signatures":[611515178]}}
{"event_type":"create","key":"/buckets/clearance-uploads/uploads/5f2b7c0e9a1d3c48/with space+plus é.txt","message":{"new_entry":{"name":"with space+plus é.txt","chunks":[{"size":1,"modified_ts_ns":1795776849821139386,"e_tag":"uezhjJUK+/prD9v6T/cx0w==","fid":{"volume_id":2,"file_key":233,"cookie":472496733},"sse_type":3,"sse_metadata":"UkVEQUNURUQ="}],"attributes":{"file_size":1,"mtime":1795776849,"file_mode":432,"crtime":1795776849,"mime":"text/plain; charset=utf-8","md5":"ndTkYSaMgDT1yFZOFVxnpg==","inode":6029016728046715071,"ctime":1795776849,"atime":1795776849},"extended":{"Seaweed-X-Amz-ETag":"OWRkNGU0NjEyNjhjODAzNGY1Yzg1NjRlMTU1YzY3YTY=","Seaweed-X-Amz-Owner":"Y2xlYXJhbmNl","X-Amz-Server-Side-Encryption":"QUVTMjU2","x-seaweedfs-checksum-algorithm":"WC1BbXotQ2hlY2tzdW0tQ3JjMzI=","x-seaweedfs-checksum-value":"ak53V2d3PT0=","x-seaweedfs-sse-s3-key":"UkVEQUNURUQ="}},"delete_chunks":true,"new_parent_path":"/buckets/clearance-uploads/uploads/5f2b7c0e9a1d3c48","signatures":[611515178]}}
{"event_type":"create","key":"/buckets/clearance-uploads/uploads/5f2b7c0e9a1d3c48/empty","message":{"new_entry":{"name":"empty","attributes":{"mtime":1795776849,"file_mode":432,"crtime":1795776849,"md5":"1B2M2Y8AsgTpgAmY7PhCfg==","inode":9291638894124292214,"ctime":1795776849,"atime":1795776849},"extended":{"Seaweed-X-Amz-ETag":"ZDQxZDhjZDk4ZjAwYjIwNGU5ODAwOTk4ZWNmODQyN2U=","Seaweed-X-Amz-Owner":"Y2xlYXJhbmNl","X-Amz-Server-Side-Encryption":"QUVTMjU2","x-seaweedfs-checksum-algorithm":"WC1BbXotQ2hlY2tzdW0tQ3JjMzI=","x-seaweedfs-checksum-value":"QUFBQUFBPT0=","x-seaweedfs-sse-s3-key":"UkVEQUNURUQ="}},"delete_chunks":true,"new_parent_path":"/buckets/clearance-uploads/uploads/5f2b7c0e9a1d3c48","signatures":[611515178]}}
{"event_type":"update","key":"/buckets/clearance-uploads/uploads/5f2b7c0e9a1d3c48/6f1c2d3e-4b5a-4c7d-8e9f-0a1b2c3d4e5f","message":{"old_entry":{"name":"6f1c2d3e-4b5a-4c7d-8e9f-0a1b2c3d4e5f","chunks":[{"file_id":"2,e497e42ed8","size":11,"modified_ts_ns":1795776849664253427,"e_tag":"APIzScdG+zrFk/ehQmzFZA==","fid":{"volume_id":2,"file_key":228,"cookie":2548313816},"sse_type":3,"sse_metadata":"UkVEQUNURUQ="}],"attributes":{"file_size":11,"mtime":1795776849,"file_mode":432,"crtime":1795776849,"mime":"image/png","md5":"XrY7u+Ae7tCTyyK7j1rNww==","inode":6375600199916478666,"ctime":1795776849,"atime":1795776849},"extended":{"Seaweed-X-Amz-ETag":"NWViNjNiYmJlMDFlZWVkMDkzY2IyMmJiOGY1YWNkYzM=","Seaweed-X-Amz-Owner":"Y2xlYXJhbmNl","X-Amz-Server-Side-Encryption":"QUVTMjU2","x-seaweedfs-checksum-algorithm":"WC1BbXotQ2hlY2tzdW0tQ3JjMzI=","x-seaweedfs-checksum-value":"RFVvUmhRPT0=","x-seaweedfs-sse-s3-key":"UkVEQUNURUQ="}},"new_entry":{"name":"6f1c2d3e-4b5a-4c7d-8e9f-0a1b2c3d4e5f","chunks":[{"size":11,"modified_ts_ns":1795776849664253427,"e_tag":"APIzScdG+zrFk/ehQmzFZA==","fid":{"volume_id":2,"file_key":228,"cookie":2548313816},"sse_type":3,"sse_metadata":"UkVEQUNURUQ="}],"attributes":{"file_size":11,"mtime":1795776849,"file_mode":432,"crtime":1795776849,"mime":"image/png","md5":"XrY7u+Ae7tCTyyK7j1rNww==","inode":6375600199916478666,"ctime":1795776849,"atime":1795776849},"extended":{"Seaweed-X-Amz-ETag":"NWViNjNiYmJlMDFlZWVkMDkzY2IyMmJiOGY1YWNkYzM=","Seaweed-X-Amz-Owner":"Y2xlYXJhbmNl","X-Amz-Server-Side-Encryption":"QUVTMjU2","X-Amz-Tagging-a":"Yg==","x-seaweedfs-checksum-algorithm":"WC1BbXotQ2hlY2tzdW0tQ3JjMzI=","x-seaweedfs-checksum-value":"RFVvUmhRPT0=","x-seaweedfs-sse-s3-key":"UkVEQUNURUQ="}},"delete_chunks":true,"new_parent_path":"/buckets/clearance-uploads/uploads/5f2b7c0e9a1d3c48","signatures":[611515178]}}
"""  # noqa: E501
WEBHOOK = dict(
    zip(
        (
            "put",
            "directory",
            "multipart_directory",
            "part1",
            "part2",
            "complete",
            "thumbnail",
            "odd_key",
            "empty",
            "tagging",
        ),
        WEBHOOK_CAPTURE.strip().splitlines(),
        strict=True,
    )
)

# `weed filer.meta.tail` output for the same operations, verbatim: the owner
# directory, the PUT, the multipart Complete, and the PUT's deletion.
META_TAIL_CAPTURE = r"""
{
  "directory":  "/buckets/clearance-uploads/uploads",
  "eventNotification":  {
    "oldEntry":  null,
    "newEntry":  {
      "name":  "5f2b7c0e9a1d3c48",
      "isDirectory":  true,
      "chunks":  [],
      "attributes":  {
        "fileSize":  "0",
        "mtime":  "1795776849",
        "fileMode":  2147484153,
        "uid":  0,
        "gid":  0,
        "crtime":  "1795776849",
        "mime":  "",
        "ttlSec":  0,
        "userName":  "",
        "groupName":  [],
        "symlinkTarget":  "",
        "md5":  "",
        "rdev":  0,
        "inode":  "8791221494015508384",
        "ctime":  "-62135596800",
        "mtimeNs":  664794807,
        "ctimeNs":  0,
        "crtimeNs":  0,
        "atime":  "0",
        "atimeNs":  0
      },
      "extended":  {},
      "hardLinkId":  "",
      "hardLinkCounter":  0,
      "content":  "",
      "remoteEntry":  null,
      "quota":  "0",
      "wormEnforcedAtTsNs":  "0"
    },
    "deleteChunks":  false,
    "newParentPath":  "/buckets/clearance-uploads/uploads",
    "isFromOtherCluster":  false,
    "signatures":  [
      611515178
    ]
  },
  "tsNs":  "1795776849664840131",
  "events":  [],
  "logFileRefs":  [],
  "flushedTsNs":  "0"
}
{
  "directory":  "/buckets/clearance-uploads/uploads/5f2b7c0e9a1d3c48",
  "eventNotification":  {
    "oldEntry":  null,
    "newEntry":  {
      "name":  "6f1c2d3e-4b5a-4c7d-8e9f-0a1b2c3d4e5f",
      "isDirectory":  false,
      "chunks":  [
        {
          "fileId":  "",
          "offset":  "0",
          "size":  "11",
          "modifiedTsNs":  "1795776849664253427",
          "eTag":  "APIzScdG+zrFk/ehQmzFZA==",
          "sourceFileId":  "",
          "fid":  {
            "volumeId":  2,
            "fileKey":  "228",
            "cookie":  2548313816
          },
          "sourceFid":  null,
          "cipherKey":  "",
          "isCompressed":  false,
          "isChunkManifest":  false,
          "sseType":  "SSE_S3",
          "sseMetadata":  "UkVEQUNURUQ="
        }
      ],
      "attributes":  {
        "fileSize":  "11",
        "mtime":  "1795776849",
        "fileMode":  432,
        "uid":  0,
        "gid":  0,
        "crtime":  "1795776849",
        "mime":  "image/png",
        "ttlSec":  0,
        "userName":  "",
        "groupName":  [],
        "symlinkTarget":  "",
        "md5":  "XrY7u+Ae7tCTyyK7j1rNww==",
        "rdev":  0,
        "inode":  "6375600199916478666",
        "ctime":  "1795776849",
        "mtimeNs":  0,
        "ctimeNs":  0,
        "crtimeNs":  0,
        "atime":  "1795776849",
        "atimeNs":  0
      },
      "extended":  {
        "Seaweed-X-Amz-ETag":  "NWViNjNiYmJlMDFlZWVkMDkzY2IyMmJiOGY1YWNkYzM=",
        "Seaweed-X-Amz-Owner":  "Y2xlYXJhbmNl",
        "X-Amz-Server-Side-Encryption":  "QUVTMjU2",
        "x-seaweedfs-checksum-algorithm":  "WC1BbXotQ2hlY2tzdW0tQ3JjMzI=",
        "x-seaweedfs-checksum-value":  "RFVvUmhRPT0=",
        "x-seaweedfs-sse-s3-key":  "UkVEQUNURUQ="
      },
      "hardLinkId":  "",
      "hardLinkCounter":  0,
      "content":  "",
      "remoteEntry":  null,
      "quota":  "0",
      "wormEnforcedAtTsNs":  "0"
    },
    "deleteChunks":  true,
    "newParentPath":  "/buckets/clearance-uploads/uploads/5f2b7c0e9a1d3c48",
    "isFromOtherCluster":  false,
    "signatures":  [
      611515178
    ]
  },
  "tsNs":  "1795776849664888481",
  "events":  [],
  "logFileRefs":  [],
  "flushedTsNs":  "0"
}
{
  "directory":  "/buckets/clearance-uploads/uploads/5f2b7c0e9a1d3c48",
  "eventNotification":  {
    "oldEntry":  null,
    "newEntry":  {
      "name":  "7a8b9c0d-1e2f-4a3b-9c4d-5e6f7a8b9c0d",
      "isDirectory":  false,
      "chunks":  [
        {
          "fileId":  "",
          "offset":  "0",
          "size":  "4194304",
          "modifiedTsNs":  "1795776849796978329",
          "eTag":  "uLp1VwvBazt45ZXxNRYTlA==",
          "sourceFileId":  "",
          "fid":  {
            "volumeId":  2,
            "fileKey":  "229",
            "cookie":  572019840
          },
          "sourceFid":  null,
          "cipherKey":  "",
          "isCompressed":  false,
          "isChunkManifest":  false,
          "sseType":  "SSE_S3",
          "sseMetadata":  "UkVEQUNURUQ="
        },
        {
          "fileId":  "",
          "offset":  "4194304",
          "size":  "1048576",
          "modifiedTsNs":  "1795776849768130170",
          "eTag":  "P28brqIHo/v3UJ2jfvAtYA==",
          "sourceFileId":  "",
          "fid":  {
            "volumeId":  2,
            "fileKey":  "230",
            "cookie":  3231433995
          },
          "sourceFid":  null,
          "cipherKey":  "",
          "isCompressed":  false,
          "isChunkManifest":  false,
          "sseType":  "SSE_S3",
          "sseMetadata":  "UkVEQUNURUQ="
        },
        {
          "fileId":  "",
          "offset":  "5242880",
          "size":  "10",
          "modifiedTsNs":  "1795776849803597745",
          "eTag":  "hVpaDj8aX/y9M6AsND7K1w==",
          "sourceFileId":  "",
          "fid":  {
            "volumeId":  2,
            "fileKey":  "231",
            "cookie":  649058295
          },
          "sourceFid":  null,
          "cipherKey":  "",
          "isCompressed":  false,
          "isChunkManifest":  false,
          "sseType":  "SSE_S3",
          "sseMetadata":  "UkVEQUNURUQ="
        }
      ],
      "attributes":  {
        "fileSize":  "5242890",
        "mtime":  "1795776849",
        "fileMode":  504,
        "uid":  0,
        "gid":  0,
        "crtime":  "1795776849",
        "mime":  "image/png",
        "ttlSec":  0,
        "userName":  "",
        "groupName":  [],
        "symlinkTarget":  "",
        "md5":  "",
        "rdev":  0,
        "inode":  "338550376574713961",
        "ctime":  "1795776849",
        "mtimeNs":  0,
        "ctimeNs":  0,
        "crtimeNs":  0,
        "atime":  "1795776849",
        "atimeNs":  0
      },
      "extended":  {
        "Seaweed-X-Amz-ETag":  "OGIwYmU3ODQ3ZGE1NTY0YWUwOGU5N2FmNjNiNjA4ODUtMg==",
        "Seaweed-X-Amz-Owner":  "Y2xlYXJhbmNl",
        "X-Amz-Server-Side-Encryption":  "QUVTMjU2",
        "X-Seaweedfs-Multipart-Part-Boundaries":  "W3sicGFydCI6MSwic3RhcnQiOjAsImVuZCI6MiwiZXRhZyI6IlwiNzliMjgxMDYwZDMzN2I5YjJiODRjY2YzOTBhZGNmNzRcIiIsImVuZE9mZnNldCI6NTI0Mjg4MH0seyJwYXJ0IjoyLCJzdGFydCI6MiwiZW5kIjozLCJldGFnIjoiXCI4MjEzNmI0MjQwZDZjZTRlYTdkMDNlNTE0NjlhMzkzYlwiIiwic3RhcnRPZmZzZXQiOjUyNDI4ODAsImVuZE9mZnNldCI6NTI0Mjg5MH1d",
        "X-Seaweedfs-Multipart-Parts-Count":  "Mg==",
        "X-Seaweedfs-Upload-Id":  "YzRhMWY0YTA4YmJlMzdlZDhiNzlhNmI2ZTlmNWQyOGJmZmE5ZGE1N18zZjJkYTViNGNjNmE0ODY4OTlmNGUzZmEwOThkMTdjOA==",
        "x-seaweedfs-sse-s3-base-iv":  "UkVEQUNURUQ=",
        "x-seaweedfs-sse-s3-encryption":  "UkVEQUNURUQ=",
        "x-seaweedfs-sse-s3-key":  "UkVEQUNURUQ=",
        "x-seaweedfs-sse-s3-key-data":  "UkVEQUNURUQ="
      },
      "hardLinkId":  "",
      "hardLinkCounter":  0,
      "content":  "",
      "remoteEntry":  null,
      "quota":  "0",
      "wormEnforcedAtTsNs":  "0"
    },
    "deleteChunks":  true,
    "newParentPath":  "/buckets/clearance-uploads/uploads/5f2b7c0e9a1d3c48",
    "isFromOtherCluster":  false,
    "signatures":  [
      611515178
    ]
  },
  "tsNs":  "1795776849810236317",
  "events":  [],
  "logFileRefs":  [],
  "flushedTsNs":  "0"
}
{
  "directory":  "/buckets/clearance-uploads/uploads/5f2b7c0e9a1d3c48",
  "eventNotification":  {
    "oldEntry":  {
      "name":  "6f1c2d3e-4b5a-4c7d-8e9f-0a1b2c3d4e5f",
      "isDirectory":  false,
      "chunks":  [
        {
          "fileId":  "2,e497e42ed8",
          "offset":  "0",
          "size":  "11",
          "modifiedTsNs":  "1795776849664253427",
          "eTag":  "APIzScdG+zrFk/ehQmzFZA==",
          "sourceFileId":  "",
          "fid":  {
            "volumeId":  2,
            "fileKey":  "228",
            "cookie":  2548313816
          },
          "sourceFid":  null,
          "cipherKey":  "",
          "isCompressed":  false,
          "isChunkManifest":  false,
          "sseType":  "SSE_S3",
          "sseMetadata":  "UkVEQUNURUQ="
        }
      ],
      "attributes":  {
        "fileSize":  "11",
        "mtime":  "1795776849",
        "fileMode":  432,
        "uid":  0,
        "gid":  0,
        "crtime":  "1795776849",
        "mime":  "image/png",
        "ttlSec":  0,
        "userName":  "",
        "groupName":  [],
        "symlinkTarget":  "",
        "md5":  "XrY7u+Ae7tCTyyK7j1rNww==",
        "rdev":  0,
        "inode":  "6375600199916478666",
        "ctime":  "1795776849",
        "mtimeNs":  0,
        "ctimeNs":  0,
        "crtimeNs":  0,
        "atime":  "1795776849",
        "atimeNs":  0
      },
      "extended":  {
        "Seaweed-X-Amz-ETag":  "NWViNjNiYmJlMDFlZWVkMDkzY2IyMmJiOGY1YWNkYzM=",
        "Seaweed-X-Amz-Owner":  "Y2xlYXJhbmNl",
        "X-Amz-Server-Side-Encryption":  "QUVTMjU2",
        "X-Amz-Tagging-a":  "Yg==",
        "x-seaweedfs-checksum-algorithm":  "WC1BbXotQ2hlY2tzdW0tQ3JjMzI=",
        "x-seaweedfs-checksum-value":  "RFVvUmhRPT0=",
        "x-seaweedfs-sse-s3-key":  "UkVEQUNURUQ="
      },
      "hardLinkId":  "",
      "hardLinkCounter":  0,
      "content":  "",
      "remoteEntry":  null,
      "quota":  "0",
      "wormEnforcedAtTsNs":  "0"
    },
    "newEntry":  null,
    "deleteChunks":  true,
    "newParentPath":  "",
    "isFromOtherCluster":  false,
    "signatures":  [
      611515178
    ]
  },
  "tsNs":  "1795776849836836660",
  "events":  [],
  "logFileRefs":  [],
  "flushedTsNs":  "0"
}
"""  # noqa: E501

# The example body from the team's SeaweedFS notes (bucket `upl`, key `dir1/a.txt`).
NOTES_EXAMPLE = {
    "event_type": "create",
    "key": "/buckets/upl/dir1/a.txt",
    "message": {
        "new_entry": {
            "name": "a.txt",
            "chunks": [
                {
                    "size": 11,
                    "modified_ts_ns": 1795772878981214174,
                    "e_tag": "XrY7u+Ae7tCTyyK7j1rNww==",
                    "fid": {"volume_id": 1, "file_key": 1, "cookie": 1865987322},
                }
            ],
            "attributes": {
                "file_size": 11,
                "mtime": 1795772878,
                "file_mode": 432,
                "crtime": 1795772878,
                "mime": "text/plain",
                "md5": "XrY7u+Ae7tCTyyK7j1rNww==",
                "inode": 14168645377613817239,
                "ctime": 1795772878,
                "atime": 1795772878,
            },
            "extended": {
                "Seaweed-X-Amz-ETag": "NWViNjNiYmJlMDFlZWVkMDkzY2IyMmJiOGY1YWNkYzM=",
                "Seaweed-X-Amz-Owner": "YWRtaW4=",
                "X-Amz-Meta-Foo": "YmFy",
                "x-seaweedfs-checksum-algorithm": "WC1BbXotQ2hlY2tzdW0tQ3JjMzI=",
                "x-seaweedfs-checksum-value": "RFVvUmhRPT0=",
            },
        },
        "delete_chunks": True,
        "new_parent_path": "/buckets/upl/dir1",
        "signatures": [100502695],
    },
}


def webhook(name: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(WEBHOOK[name])
    return doc


def as_body(doc: object) -> bytes:
    return json.dumps(doc).encode()


def created(outcome: Outcome | list[Outcome]) -> ObjectCreated:
    assert isinstance(outcome, ObjectCreated), outcome
    return outcome


def ignored(outcome: Outcome) -> Ignored:
    assert isinstance(outcome, Ignored), outcome
    return outcome


def same_object(key: str, size: int, etag: str | None) -> str:
    """The event id any path (gateway, reconciler, relay) gives this object."""
    upload_id = uuid.UUID(key.rsplit("/", 1)[1])
    return ObjectCreated.build(
        upload_id=upload_id, bucket=SCOPE.bucket, key=key, size=size, etag=etag, source="gateway"
    ).event_id


def meta_tail_objects(text: str = META_TAIL_CAPTURE) -> list[dict[str, Any]]:
    decoder = MetaLogDecoder()
    found = [doc for line in text.splitlines(keepends=True) if (doc := decoder.feed(line))]
    decoder.finish()
    return found


# --- SeaweedFS filer webhook -------------------------------------------------------------


def test_captured_put_becomes_object_created_with_the_s3_etag_and_size() -> None:
    event = created(parse_seaweedfs_webhook(WEBHOOK["put"].encode(), SCOPE))
    assert event.upload_id == PUT_ID
    assert (event.bucket, event.key, event.size, event.etag) == (
        "clearance-uploads",
        PUT_KEY,
        11,
        PUT_ETAG,
    )
    assert event.source == "seaweedfs"
    assert event.event_id == same_object(PUT_KEY, 11, PUT_ETAG)
    assert event.occurred_at == datetime.fromtimestamp(1795776849, UTC)


def test_captured_multipart_complete_has_the_total_size_and_multipart_etag() -> None:
    event = created(parse_seaweedfs_webhook(WEBHOOK["complete"], SCOPE))
    assert (event.upload_id, event.key) == (MULTIPART_ID, MULTIPART_KEY)
    assert (event.size, event.etag) == (MULTIPART_SIZE, MULTIPART_ETAG)


@pytest.mark.parametrize(
    ("name", "code"),
    [
        ("directory", "directory"),
        ("multipart_directory", "directory"),
        ("part1", "multipart-staging"),
        ("part2", "multipart-staging"),
        ("thumbnail", "not-an-upload"),
        ("odd_key", "not-an-upload"),
        ("empty", "not-an-upload"),
    ],
)
def test_captured_non_upload_events_are_ignored_with_a_reason(name: str, code: str) -> None:
    assert ignored(parse_seaweedfs_webhook(WEBHOOK[name], SCOPE)).code == code


def test_tagging_update_reports_the_same_event_as_the_put() -> None:
    put = created(parse_seaweedfs_webhook(WEBHOOK["put"], SCOPE))
    update = created(parse_seaweedfs_webhook(WEBHOOK["tagging"], SCOPE))
    assert update.event_id == put.event_id


def test_empty_object_has_size_zero_though_seaweedfs_omits_the_field() -> None:
    doc = webhook("empty")
    assert "file_size" not in doc["message"]["new_entry"]["attributes"]
    doc["key"] = f"/buckets/clearance-uploads/{PUT_KEY}"
    event = created(parse_seaweedfs_webhook(as_body(doc), SCOPE))
    assert (event.size, event.etag) == (0, "d41d8cd98f00b204e9800998ecf8427e")


def test_etag_falls_back_to_the_md5_attribute() -> None:
    doc = webhook("put")
    del doc["message"]["new_entry"]["extended"]["Seaweed-X-Amz-ETag"]
    assert created(parse_seaweedfs_webhook(as_body(doc), SCOPE)).etag == PUT_ETAG


def test_no_etag_at_all_is_none_not_an_error() -> None:
    doc = webhook("complete")
    del doc["message"]["new_entry"]["extended"]["Seaweed-X-Amz-ETag"]
    assert created(parse_seaweedfs_webhook(as_body(doc), SCOPE)).etag is None


def test_notes_example_is_read_and_judged_by_its_key() -> None:
    scope = Scope(bucket="upl", upload_prefix="uploads")
    assert ignored(parse_seaweedfs_webhook(as_body(NOTES_EXAMPLE), scope)).code == "not-an-upload"
    doc = json.loads(json.dumps(NOTES_EXAMPLE))
    doc["key"] = f"/buckets/upl/{PUT_KEY}"
    event = created(parse_seaweedfs_webhook(as_body(doc), scope))
    assert (event.bucket, event.key, event.size, event.etag) == ("upl", PUT_KEY, 11, PUT_ETAG)


@pytest.mark.parametrize(
    ("path", "code"),
    [
        ("/buckets/.system/owners/clearance/clearance-uploads", "system-bucket"),
        (f"/buckets/other-bucket/{PUT_KEY}", "outside-bucket"),
        (f"/buckets/clearance-uploads-2/{PUT_KEY}", "outside-bucket"),
        (f"/elsewhere/{PUT_KEY}", "outside-bucket"),
        (f"/buckets/clearance-uploads/.uploads/x/{PUT_ID}", "multipart-staging"),
        (f"/buckets/clearance-uploads/quarantine/{PUT_KEY}", "not-an-upload"),
    ],
)
def test_paths_outside_our_upload_keys_are_ignored(path: str, code: str) -> None:
    doc = webhook("put")
    doc["key"] = path
    assert ignored(parse_seaweedfs_webhook(as_body(doc), SCOPE)).code == code


@pytest.mark.parametrize("event_type", ["delete", "rename"])
def test_other_event_types_are_ignored(event_type: str) -> None:
    doc = webhook("put")
    doc["event_type"] = event_type
    assert ignored(parse_seaweedfs_webhook(as_body(doc), SCOPE)).code == "event-type"


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        (b"", "not valid JSON"),
        (b"{not json", "not valid JSON"),
        (b"\xff\xfe", "not valid JSON"),
        (b"[]", "must be a JSON object"),
        (b'{"key": "/buckets/b/k"}', "event_type must be a string"),
        (b'{"event_type": "create"}', "key must be a string"),
        (b'{"event_type": "create", "key": "/buckets/b/k"}', "message must be an object"),
        (b'{"event_type": "create", "key": "/b", "message": {}}', "needs message.new_entry"),
        (
            b'{"event_type": "update", "key": "/b", "message": {"new_entry": []}}',
            "message.new_entry must be an object",
        ),
    ],
)
def test_malformed_webhook_bodies_are_refused_precisely(body: bytes, detail: str) -> None:
    with pytest.raises(MalformedNotification, match=detail):
        parse_seaweedfs_webhook(body, SCOPE)


@pytest.mark.parametrize(
    ("change", "detail"),
    [
        ({"file_size": "eleven"}, "attributes.file_size must be an integer"),
        ({"file_size": -1}, "attributes.file_size must not be negative"),
        ({"file_size": True}, "attributes.file_size must be an integer"),
        ({"etag": "not base64!"}, "Seaweed-X-Amz-ETag is not base64"),
        ({"etag": 5}, "Seaweed-X-Amz-ETag must be a string"),
    ],
)
def test_malformed_fields_of_an_upload_object_are_refused(
    change: dict[str, Any], detail: str
) -> None:
    doc = webhook("put")
    entry = doc["message"]["new_entry"]
    if "file_size" in change:
        entry["attributes"]["file_size"] = change["file_size"]
    if "etag" in change:
        entry["extended"]["Seaweed-X-Amz-ETag"] = change["etag"]
    with pytest.raises(MalformedNotification, match=detail):
        parse_seaweedfs_webhook(as_body(doc), SCOPE)


# --- AWS S3 event records (AWS targets, MinIO webhook) ----------------------------------


def aws_record(
    key: str,
    *,
    event: str = "ObjectCreated:Put",
    bucket: str = "clearance-uploads",
    size: int = 11,
    etag: str = PUT_ETAG,
) -> dict[str, Any]:
    """A record shaped like AWS's event message structure 2.1 (key form-encoded)."""
    return {
        "eventVersion": "2.1",
        "eventSource": "aws:s3",
        "awsRegion": "us-east-1",
        "eventTime": "2026-11-27T10:54:09.664Z",
        "eventName": event,
        "userIdentity": {"principalId": "AWS:AIDAEXAMPLE"},
        "requestParameters": {"sourceIPAddress": "203.0.113.9"},
        "responseElements": {"x-amz-request-id": "C3D13FE58DE4C810", "x-amz-id-2": "FMyUVURI"},
        "s3": {
            "s3SchemaVersion": "1.0",
            "configurationId": "clearance-object-created",
            "bucket": {
                "name": bucket,
                "ownerIdentity": {"principalId": "A3NL1KOZZKEXAMPLE"},
                "arn": f"arn:aws:s3:::{bucket}",
            },
            "object": {
                "key": quote_plus(key, safe="/"),
                "size": size,
                "eTag": etag,
                "sequencer": "0055AED6DCD90281E5",
            },
        },
    }


def minio_body(key: str, *, size: int = 11, etag: str = PUT_ETAG) -> dict[str, Any]:
    """MinIO's webhook shape: `EventName`, `Key`, and the records with `s3:` names."""
    record = aws_record(key, event="s3:ObjectCreated:Put", size=size, etag=etag)
    record["eventSource"] = "minio:s3"
    # MinIO escapes the whole key, slashes included.
    record["s3"]["object"]["key"] = quote_plus(key, safe="")
    record["s3"]["object"]["contentType"] = "image/png"
    record["s3"]["object"]["userMetadata"] = {"content-type": "image/png"}
    record["source"] = {"host": "203.0.113.9", "port": "", "userAgent": "MinIO (linux; amd64)"}
    return {
        "EventName": "s3:ObjectCreated:Put",
        "Key": f"clearance-uploads/{key}",
        "Records": [record],
    }


def test_aws_put_record_becomes_the_same_event_as_the_seaweedfs_webhook() -> None:
    [outcome] = parse_s3_event(as_body({"Records": [aws_record(PUT_KEY)]}), SCOPE)
    event = created(outcome)
    from_webhook = created(parse_seaweedfs_webhook(WEBHOOK["put"], SCOPE))
    assert (event.key, event.size, event.etag, event.source) == (PUT_KEY, 11, PUT_ETAG, "s3")
    assert event.event_id == from_webhook.event_id
    assert event.occurred_at == datetime(2026, 11, 27, 10, 54, 9, 664000, UTC)


def test_one_body_with_many_records_gives_one_outcome_each_in_order() -> None:
    body = {
        "Records": [
            aws_record(PUT_KEY),
            aws_record(PUT_KEY, event="ObjectRemoved:Delete"),
            aws_record(PUT_KEY, bucket="someone-else"),
            aws_record(
                MULTIPART_KEY,
                event="ObjectCreated:CompleteMultipartUpload",
                size=MULTIPART_SIZE,
                etag=MULTIPART_ETAG,
            ),
            aws_record(f"{PUT_KEY}.thumb-256.webp", event="ObjectCreated:Copy"),
        ]
    }
    outcomes = parse_s3_event(as_body(body), SCOPE)
    assert created(outcomes[0]).key == PUT_KEY
    assert [ignored(o).code for o in outcomes[1:3]] == ["event-type", "outside-bucket"]
    assert created(outcomes[3]).event_id == same_object(
        MULTIPART_KEY, MULTIPART_SIZE, MULTIPART_ETAG
    )
    assert ignored(outcomes[4]).code == "not-an-upload"


def test_plus_encoded_keys_with_spaces_and_unicode_are_decoded() -> None:
    key = f"uploads/{OWNER}/with space+plus é.txt"
    record = aws_record(key)
    raw = record["s3"]["object"]["key"]
    assert raw == f"uploads/{OWNER}/with+space%2Bplus+%C3%A9.txt"
    [outcome] = parse_s3_event(as_body({"Records": [record]}), SCOPE)
    assert ignored(outcome).detail == f"{key} is not an upload key"


def test_minio_shape_with_escaped_slashes_and_s3_prefixed_names() -> None:
    body = minio_body(MULTIPART_KEY, size=MULTIPART_SIZE, etag=MULTIPART_ETAG)
    assert "%2F" in body["Records"][0]["s3"]["object"]["key"]
    [outcome] = parse_s3_event(as_body(body), SCOPE)
    event = created(outcome)
    assert event.key == MULTIPART_KEY
    assert event.event_id == created(parse_seaweedfs_webhook(WEBHOOK["complete"], SCOPE)).event_id


def test_quoted_etag_is_unquoted() -> None:
    [outcome] = parse_s3_event(
        as_body({"Records": [aws_record(PUT_KEY, etag=f'"{PUT_ETAG}"')]}), SCOPE
    )
    assert created(outcome).etag == PUT_ETAG


def test_aws_test_event_is_ignored() -> None:
    body = {
        "Service": "Amazon S3",
        "Event": "s3:TestEvent",
        "Time": "2026-11-27T10:00:00.000Z",
        "Bucket": "clearance-uploads",
        "RequestId": "5582815E1AEA5ADF",
        "HostId": "8cLeGAmw098X5cv4Zkwcmo8vvZa3eH3eKxsPzbB9wrR+YstdA6Knx4Ip8EXAMPLE",
    }
    assert [ignored(o).code for o in parse_s3_event(as_body(body), SCOPE)] == ["test-event"]


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        (b"nope", "not valid JSON"),
        (b'"Records"', "must be a JSON object"),
        (b"{}", "no Records array"),
        (b'{"Records": {}}', "Records must be an array"),
        (b'{"Records": [1]}', r"Records\[0\] must be an object"),
        (b'{"Records": [{"s3": {}}]}', r"Records\[0\]\.eventName must be a string"),
        (
            b'{"Records": [{"eventName": "ObjectCreated:Put", "s3": {"bucket": {}}}]}',
            r"Records\[0\]\.s3\.bucket\.name must be a string",
        ),
    ],
)
def test_malformed_s3_bodies_are_refused_precisely(body: bytes, detail: str) -> None:
    with pytest.raises(MalformedNotification, match=detail):
        parse_s3_event(body, SCOPE)


def test_one_bad_record_refuses_the_whole_body_and_names_it() -> None:
    bad = aws_record(MULTIPART_KEY)
    del bad["s3"]["object"]["size"]
    with pytest.raises(MalformedNotification, match=r"Records\[1\]\.s3\.object\.size"):
        parse_s3_event(as_body({"Records": [aws_record(PUT_KEY), bad]}), SCOPE)


def test_key_that_is_not_utf8_after_decoding_is_refused() -> None:
    record = aws_record(PUT_KEY)
    record["s3"]["object"]["key"] = "uploads/%FF%FE"
    with pytest.raises(MalformedNotification, match="not URL-encoded UTF-8"):
        parse_s3_event(as_body({"Records": [record]}), SCOPE)


# --- filer metadata log (weed filer.meta.tail) ------------------------------------------


def test_captured_meta_tail_output_decodes_into_its_objects() -> None:
    docs = meta_tail_objects()
    assert [int(doc["tsNs"]) for doc in docs] == [
        1795776849664840131,
        1795776849664888481,
        1795776849810236317,
        1795776849836836660,
    ]


def test_captured_meta_tail_events_match_the_webhook_events() -> None:
    records = [parse_meta_log_event(doc, SCOPE) for doc in meta_tail_objects()]
    directory, put, complete, deletion = (r.outcome for r in records)
    assert ignored(directory).code == "directory"
    assert ignored(deletion).code == "deleted"
    assert created(put).event_id == created(parse_seaweedfs_webhook(WEBHOOK["put"], SCOPE)).event_id
    assert (created(put).size, created(put).etag) == (11, PUT_ETAG)
    event = created(complete)
    assert (event.key, event.size, event.etag) == (MULTIPART_KEY, MULTIPART_SIZE, MULTIPART_ETAG)
    assert records[2].ts_ns == 1795776849810236317
    assert event.occurred_at == datetime.fromtimestamp(1795776849810236317 / 1e9, UTC)


def test_decoder_reads_compact_objects_and_blank_lines_too() -> None:
    text = '\n{"tsNs": "1", "a": {"b": "}"}}\n\n{"tsNs": "2"}\n'
    assert [doc["tsNs"] for doc in meta_tail_objects(text)] == ["1", "2"]


def test_decoder_reports_weeds_error_line_and_recovers() -> None:
    # What weed prints on stdout (exit status 0) when the filer is unreachable.
    error = (
        "tail 127.0.0.1:18999.28999: subscribing filer meta change: subscribe: rpc error: "
        'code = Unavailable desc = connection error: desc = "transport: Error while dialing"\n'
    )
    decoder = MetaLogDecoder()
    with pytest.raises(MalformedNotification, match="subscribing filer meta change"):
        decoder.feed(error)
    lines = META_TAIL_CAPTURE.splitlines(keepends=True)
    assert [doc for line in lines if (doc := decoder.feed(line))]


def test_decoder_refuses_output_that_ends_inside_an_object() -> None:
    decoder = MetaLogDecoder()
    for line in META_TAIL_CAPTURE.splitlines(keepends=True)[:30]:
        assert decoder.feed(line) is None
    with pytest.raises(MalformedNotification, match="ended inside an object"):
        decoder.finish()


def test_decoder_refuses_a_broken_object_and_goes_on_with_the_next() -> None:
    decoder = MetaLogDecoder()
    assert decoder.feed("{\n") is None
    assert decoder.feed('  "tsNs": ,\n') is None
    with pytest.raises(MalformedNotification, match="line 1: object is not valid JSON"):
        decoder.feed("}\n")
    assert decoder.feed('{"tsNs": "3"}\n') == {"tsNs": "3"}


def test_decoder_caps_the_size_of_one_object() -> None:
    decoder = MetaLogDecoder(max_object_bytes=100)
    decoder.feed("{\n")
    with pytest.raises(MalformedNotification, match="larger than 100 bytes"):
        decoder.feed(f'  "content": "{"x" * 200}",\n')


def test_rename_is_judged_by_the_new_path() -> None:
    doc = meta_tail_objects()[1]
    doc["directory"] = "/buckets/clearance-uploads/incoming"
    assert created(parse_meta_log_event(doc, SCOPE).outcome).key == PUT_KEY
    doc["eventNotification"]["newParentPath"] = "/buckets/clearance-uploads/incoming"
    assert ignored(parse_meta_log_event(doc, SCOPE).outcome).code == "not-an-upload"


@pytest.mark.parametrize(
    ("change", "detail"),
    [
        ({"tsNs": None}, "tsNs must be an integer"),
        ({"tsNs": "soon"}, "tsNs must be an integer"),
        ({"directory": 7}, "directory must be a string"),
        ({"eventNotification": "x"}, "eventNotification must be an object"),
    ],
)
def test_malformed_meta_log_events_are_refused(change: dict[str, Any], detail: str) -> None:
    doc = meta_tail_objects()[1] | change
    with pytest.raises(MalformedNotification, match=detail):
        parse_meta_log_event(doc, SCOPE)


def test_meta_log_file_size_as_string_and_md5_fallback() -> None:
    doc = meta_tail_objects()[1]
    entry = doc["eventNotification"]["newEntry"]
    assert entry["attributes"]["fileSize"] == "11"  # protojson int64
    del entry["extended"]["Seaweed-X-Amz-ETag"]
    assert created(parse_meta_log_event(doc, SCOPE).outcome).etag == PUT_ETAG
    assert base64.b64decode(entry["attributes"]["md5"]).hex() == PUT_ETAG


# --- the meta.tail command and the cursor file ------------------------------------------


def test_meta_tail_command_reads_from_before_the_cursor_and_ends_by_itself() -> None:
    settings = Settings(weed_filer_port=18888, bucket="clearance-uploads", upload_prefix="uploads")
    now = 1_800_000_000 * SECOND_NS
    argv = meta_tail_command(Path("weed"), settings, since_ns=now - 60 * SECOND_NS, now_ns=now)
    assert argv[:2] == ["weed", "filer.meta.tail"]
    assert "-filer=127.0.0.1:18888.28888" in argv
    assert "-pathPrefix=/buckets/clearance-uploads/uploads/" in argv
    assert f"-timeAgo={60 * SECOND_NS + READ_MARGIN_NS}ns" in argv
    # `-untilTimeAgo=0s` would follow the log forever.
    assert "-untilTimeAgo=1ns" in argv


def test_filer_address_follows_the_storage_host() -> None:
    settings = Settings(s3_endpoint_url="http://seaweedfs:8333", weed_filer_port=8888)
    assert filer_address(settings) == "seaweedfs:8888.18888"


def test_cursor_file_round_trip_and_unreadable_files(tmp_path: Path) -> None:
    cursor = CursorFile(tmp_path / "relay" / "cursor.json")
    assert cursor.load() is None
    cursor.save(1795776849810236317)
    assert cursor.load() == 1795776849810236317
    for junk in ("", "{", '{"ts_ns": "x"}', '{"ts_ns": -5}', "[]"):
        cursor.path.write_text(junk)
        assert cursor.load() is None
