"""One list of statuses: the OpenAPI document and every client agree with `shared.status`."""

from __future__ import annotations

import re
from pathlib import Path

import orjson

from clients.cli.gateway import FINAL_STATUSES
from services.gateway import openapi
from shared.status import FINAL, Status

WEB = Path(__file__).resolve().parents[2] / "clients" / "web"


def test_openapi_lists_every_status_as_an_enum() -> None:
    document = orjson.loads(orjson.dumps(openapi.document()))
    schemas = document["components"]["schemas"]
    assert schemas["Status"]["enum"] == [s.value for s in Status]
    record = schemas["UploadRecord"]["properties"]["status"]
    assert record == {"$ref": "#/components/schemas/Status"}


def test_the_browser_module_knows_the_final_statuses() -> None:
    source = (WEB / "clearance-upload.js").read_text()
    found = re.search(r"export const FINAL_STATES = new Set\(\[([^\]]*)\]\)", source)
    assert found, "FINAL_STATES not found in clearance-upload.js"
    named = set(re.findall(r'"([a-z]+)"', found.group(1)))
    enum = set(openapi.document()["components"]["schemas"]["Status"]["enum"])
    assert named <= enum
    assert named == {s.value for s in FINAL}


def test_the_demo_page_names_only_real_statuses() -> None:
    source = (WEB / "demo.js").read_text()
    stages = re.search(r"const STAGES = \[([^\]]*)\]", source)
    assert stages
    assert set(re.findall(r'"([a-z]+)"', stages.group(1))) <= {s.value for s in Status}


def test_the_cli_uses_the_shared_list() -> None:
    assert FINAL_STATUSES == FINAL
