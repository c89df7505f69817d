"""A stand-in for Plivo's Call API on loopback, as the ``plivo`` SDK speaks it.

HTTP Basic auth (auth id and token); JSON bodies. ``POST /v1/Account/{auth_id}/Call/`` (``from``, ``to``,
``answer_url``, ``hangup_url``, ``machine_detection``, ``machine_detection_url``...) answers 201 ``{"api_id",
"message": "call fired", "request_uuid"}`` and hands the call to ``on_call``; ``POST
/v1/Account/{auth_id}/Call/{call_uuid}/`` (``legs``, ``aleg_url``: a transfer) answers 202 ``{"api_id",
"message": "call transferred"}`` and hands it to ``on_update``. Errors as Plivo writes them: ``{"api_id",
"error"}``, 404 for a call it does not know.
"""

from __future__ import annotations

import base64
import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from standins.openai_service import serve_on_loopback
from standins.twilio_rest import Background


@dataclass
class PlivoRestStandIn:
    """Plivo's Call resource for one account, recorded for the tests' assertions."""

    auth_id: str
    auth_token: str
    created: list[dict[str, Any]] = field(default_factory=list)
    """Each create request's JSON body, with the ``request_uuid`` answered (``_request_uuid``)."""
    live: set[str] = field(default_factory=set)
    """``CallUUID``s of the calls in progress (an update of any other is 404)."""
    updates: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    fail_calls: int | None = None
    """HTTP status to answer creates and updates with (None: answer normally)."""
    on_call: Callable[[dict[str, Any]], Awaitable[None]] | None = None
    on_update: Callable[[str, dict[str, Any]], Awaitable[None]] | None = None
    _background: Background = field(default_factory=Background)

    def app(self) -> web.Application:
        app = web.Application()
        base = f"/v1/Account/{self.auth_id}/Call/"
        app.router.add_post(base, self._create)
        app.router.add_post(base + "{uuid}/", self._update)
        app.on_shutdown.append(self._background.stop)
        return app

    def _authorised(self, request: web.Request) -> bool:
        header = request.headers.get("Authorization", "")
        try:
            user, _, password = base64.b64decode(header.removeprefix("Basic ")).decode().partition(":")
        except ValueError:
            return False
        return header.startswith("Basic ") and (user, password) == (self.auth_id, self.auth_token)

    async def _body(self, request: web.Request) -> dict[str, Any] | web.Response:
        if not self._authorised(request):
            return _error(401, "authentication failed")
        if self.fail_calls is not None:
            return _error(self.fail_calls, "could not process the request")
        try:
            body = await request.json()
        except ValueError:
            return _error(400, "the body is not JSON")
        return body if isinstance(body, dict) else _error(400, "the body is not an object")

    async def _create(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        if isinstance(body, web.Response):
            return body
        if not body.get("from") or not body.get("to") or not body.get("answer_url"):
            return _error(400, "from, to and answer_url are required")
        body["_request_uuid"] = str(uuid.uuid4())
        self.created.append(body)
        if self.on_call is not None:
            self._background.start(self.on_call(body))
        return web.json_response({"api_id": str(uuid.uuid4()), "message": "call fired",
                                  "request_uuid": body["_request_uuid"]}, status=201)

    async def _update(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        if isinstance(body, web.Response):
            return body
        call_uuid = request.match_info["uuid"]
        if call_uuid not in self.live:
            return _error(404, "call not found")
        if body.get("legs", "aleg") in ("aleg", "both") and not body.get("aleg_url"):
            return _error(400, "aleg_url is required when legs is aleg or both")
        self.updates.append((call_uuid, body))
        if self.on_update is not None:
            await self.on_update(call_uuid, body)
        return web.json_response({"api_id": str(uuid.uuid4()), "message": "call transferred"}, status=202)


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"api_id": str(uuid.uuid4()), "error": message}, status=status)


@contextlib.asynccontextmanager
async def plivo_rest_standin(auth_id: str, auth_token: str) -> AsyncIterator[tuple[PlivoRestStandIn, str]]:
    """Serve a Plivo REST stand-in on loopback; yields it and its origin (``PLIVO_API_BASE_URL``)."""
    standin = PlivoRestStandIn(auth_id, auth_token)
    async with serve_on_loopback(standin.app()) as address:
        yield standin, f"http://{address}"
