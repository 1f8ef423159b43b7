"""AsyncAPI 3.0 document of the public events, built from the pydantic event models.

One channel per event type on the notifications exchange (AMQP routing key
`upload.<status>`), and the webhook channel (operator-configured URLs, Standard
Webhooks headers). Schemas come from `notifications.UploadEvent`, so they can't
drift; `docs/asyncapi.json` is this document for the default exchange name, and a
test keeps the two equal (`python -m services.gateway.asyncapi > docs/asyncapi.json`).
"""

from __future__ import annotations

import sys
from typing import Any

import orjson

from services.gateway.notifications import EVENT_TYPES, UploadEvent
from shared.settings import Settings
from shared.status import FINAL, Status

DEFAULT_EXCHANGE = Settings.model_fields["notifications_exchange"].default
SCHEMAS = "#/components/schemas/"

_MEANING = {
    Status.PENDING: "The upload was created; its URL(s) are signed and no byte has landed.",
    Status.UPLOADING: "The client started sending the parts of a multipart upload.",
    Status.UPLOADED: "The object is in storage; scanning follows.",
    Status.SCANNING: "The virus scanner picked the object up.",
    Status.PROCESSING: "The scan found nothing; the file is being verified and processed.",
    Status.READY: "Verified and processed: `detected` and `thumbnails` are set and the file"
    " can be downloaded (`GET /v1/uploads/{id}/download`).",
    Status.INFECTED: "The scanner found malware (`reason` names it); the file is quarantined"
    " and never served.",
    Status.REJECTED: "The file is not what was declared (type, size, a bomb, corrupt); see"
    " `reason`.",
    Status.FAILED: "Processing failed after its retries; see `reason`.",
    Status.EXPIRED: "Nothing arrived before the upload's URL expired.",
    Status.ABORTED: "The owner aborted the upload before the bytes landed.",
}


def _message_name(status: Status) -> str:
    return "upload" + status.value.capitalize()


def _amqp_channel_binding(exchange: str) -> dict[str, Any]:
    return {
        "amqp": {
            "is": "routingKey",
            "exchange": {
                "name": exchange,
                "type": "topic",
                "durable": True,
                "autoDelete": False,
                "vhost": "/",
            },
            "bindingVersion": "0.3.0",
        }
    }


WEBHOOK_HEADERS: dict[str, Any] = {
    "type": "object",
    "required": ["webhook-id", "webhook-timestamp", "webhook-signature"],
    "properties": {
        "webhook-id": {
            "type": "string",
            "description": "The event id: the same on every attempt; drop duplicates by it",
        },
        "webhook-timestamp": {
            "type": "string",
            "description": "Unix seconds of this attempt; refuse ones far from your clock",
        },
        "webhook-signature": {
            "type": "string",
            "description": "`v1,<base64 HMAC-SHA256 of id.timestamp.body>` (Standard Webhooks)",
        },
    },
}


def document(exchange: str = DEFAULT_EXCHANGE) -> dict[str, Any]:
    """The AsyncAPI 3.0 document for events published to `exchange`."""
    schema = UploadEvent.model_json_schema(ref_template=SCHEMAS + "{model}")
    schemas: dict[str, Any] = schema.pop("$defs", {})
    schemas["UploadEvent"] = schema

    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    for status in Status:
        kind = f"upload.{status.value}"
        name = _message_name(status)
        messages[name] = {
            "name": kind,
            "title": f"Upload {status.value}",
            "summary": _MEANING[status],
            "contentType": "application/json",
            "correlationId": {"location": "$message.payload#/upload_id"},
            "payload": {
                "allOf": [
                    {"$ref": SCHEMAS + "UploadEvent"},
                    {
                        "type": "object",
                        "properties": {
                            "type": {"const": kind},
                            "status": {"const": status.value},
                        },
                    },
                ]
            },
            "bindings": {"amqp": {"messageType": kind, "bindingVersion": "0.3.0"}},
        }
        channels[kind] = {
            "address": kind,
            "title": kind,
            "description": _MEANING[status] + (" A final status." if status in FINAL else ""),
            "servers": [{"$ref": "#/servers/broker"}],
            "messages": {name: {"$ref": f"#/components/messages/{name}"}},
            "bindings": _amqp_channel_binding(exchange),
        }
        operations[f"publish{name[0].upper()}{name[1:]}"] = {
            "action": "send",
            "channel": {"$ref": f"#/channels/{kind}"},
            "summary": f"Published after a change to {status.value} is committed",
            "messages": [{"$ref": f"#/channels/{kind}/messages/{name}"}],
        }
    messages["webhook"] = {
        "name": "webhook",
        "title": "Webhook POST",
        "summary": "Any of the events above, POSTed as the request body and signed",
        "contentType": "application/json",
        "headers": WEBHOOK_HEADERS,
        "payload": {"$ref": SCHEMAS + "UploadEvent"},
        "bindings": {"http": {"bindingVersion": "0.3.0"}},
    }
    channels["webhook"] = {
        "address": None,
        "title": "Webhook endpoints",
        "description": (
            "Each operator-configured endpoint (`CLEARANCE_WEBHOOKS`) receives the events it"
            " subscribed to as POSTs signed per Standard Webhooks; a 2xx answer within the"
            " timeout accepts one, anything else is retried with back-off, in per-upload order."
        ),
        "servers": [{"$ref": "#/servers/webhooks"}],
        "messages": {"webhook": {"$ref": "#/components/messages/webhook"}},
        "bindings": {"http": {"method": "POST", "bindingVersion": "0.3.0"}},
    }
    operations["deliverWebhook"] = {
        "action": "send",
        "channel": {"$ref": "#/channels/webhook"},
        "summary": "POST one event to a subscribed endpoint",
        "messages": [{"$ref": "#/channels/webhook/messages/webhook"}],
    }
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "Clearance upload events",
            "version": "1",
            "description": (
                "One event per committed status change of an upload, in the order of the"
                " changes for each upload. Types are `upload.<status>`: "
                + ", ".join(f"`{t}`" for t in EVENT_TYPES)
                + ". Delivery is at least once: `event_id` is stable per change, so drop"
                " duplicates by it. Fields may be added; ignore the ones you do not know."
            ),
        },
        "defaultContentType": "application/json",
        "servers": {
            "broker": {
                "host": "rabbitmq:5672",
                "protocol": "amqp",
                "protocolVersion": "0.9.1",
                "description": (
                    f"Topic exchange `{exchange}` (durable): bind a durable queue of your own"
                    " with the routing keys you want, e.g. `upload.ready`, or `upload.*`."
                ),
            },
            "webhooks": {
                "host": "your-application.example",
                "protocol": "https",
                "description": "Your own endpoint; Clearance is the client.",
            },
        },
        "channels": channels,
        "operations": operations,
        "components": {"messages": messages, "schemas": schemas},
    }


if __name__ == "__main__":
    sys.stdout.buffer.write(orjson.dumps(document(), option=orjson.OPT_INDENT_2) + b"\n")
