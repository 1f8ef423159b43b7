"""`POST /v1/uploads/{id}/complete`: the client says the bytes have landed."""

from __future__ import annotations

from aiohttp import web

from services.gateway.errors import Conflict, ValidationFailed
from services.gateway.lifecycle import Status
from services.gateway.models import Accepted, CompleteUpload
from services.gateway.multipart import complete_multipart
from services.gateway.policy import FieldError
from services.gateway.views import BaseView, accept_landed, head_object, json_response


class CompleteView(BaseView):
    async def post(self) -> web.Response:
        upload = await self.load()
        body = await self.parse(CompleteUpload, empty_ok=True)
        if upload.status.final:
            raise Conflict(
                f"the upload is {upload.status.value} and can't be completed",
                upload_status=upload.status.value,
            )
        if upload.status.rank >= Status.UPLOADED.rank:
            return json_response(Accepted(id=upload.id, status=upload.status.value), status=202)
        if upload.multipart_upload_id is not None:
            return await complete_multipart(self.request, upload, body.parts)
        if body.parts:
            raise ValidationFailed(
                "this is a single-PUT upload",
                errors=[FieldError("parts", "must be absent for a single-PUT upload")],
            )
        head = await head_object(self.request, upload.bucket, upload.key)
        if head is None:
            raise Conflict("the object is not in storage yet; PUT it to the signed URL first")
        return await accept_landed(self.request, upload, head)
