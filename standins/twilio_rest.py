"""A stand-in for Twilio's REST API on loopback: the Messages list (with paging and filters) and create, and the
Calls resource (create, update, fetch).

It speaks what the ``twilio`` package's client sends and reads: HTTP Basic auth (account SID and
auth token, or an API key and secret), ``GET /2010-04-01/Accounts/{AccountSid}/Messages.json`` with
``From``, ``To``, ``DateSent>``, ``DateSent<``, ``PageSize`` and ``Page`` (newest first, paged through
``next_page_uri``), and ``POST`` of the same URL (``To``, ``From``, ``Body``) answering 201 with the
message resource. ``POST .../Calls.json`` (``To``, ``From``, ``Twiml``, ``StatusCallback``, ``MachineDetection``,
``AsyncAmd``...) answers 201 with the call resource and hands the call to ``on_call`` (the callee: a
``standins.callee`` script); ``POST .../Calls/{CallSid}.json`` (``Twiml`` or ``Status``) records the update and
hands it to ``on_update``; ``GET`` of it fetches the call. Twilio's error bodies (``code``, ``message``,
``status``) for failures, 404 (20404) for a call it does not know.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any
from urllib.parse import urlencode

from aiohttp import web

from standins.openai_service import serve_on_loopback


class Background:
    """Work a stand-in starts for a request and goes on with after answering it (a callee picking up), cancelled
    when the stand-in's app shuts down."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[None]] = set()

    def start(self, work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def stop(self, _app: web.Application | None = None) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


@dataclass
class TwilioRestStandIn:
    """Twilio's Messages resource for one account, recorded for the tests' assertions."""

    account_sid: str
    auth_token: str
    messages: list[dict[str, Any]] = field(default_factory=list)
    """Every message resource, in the order added (history, then the ones created)."""
    created: list[dict[str, Any]] = field(default_factory=list)
    """Messages sent through ``POST`` (the replies)."""
    list_queries: list[dict[str, str]] = field(default_factory=list)
    fail_list: int | None = None
    """HTTP status to answer list requests with (None: answer normally)."""
    fail_create: int | None = None
    calls: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Call resources by ``CallSid``: those created, and those ``add_call`` registered (inbound calls)."""
    call_updates: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    """``(CallSid, form)`` of every update, in order."""
    fail_calls: int | None = None
    """HTTP status to answer call creates and updates with (None: answer normally)."""
    on_call: Callable[[dict[str, Any]], Awaitable[None]] | None = None
    """Runs each created call (its resource, with the create request's form under ``_form``)."""
    on_update: Callable[[dict[str, Any], dict[str, str]], Awaitable[None]] | None = None
    _background: Background = field(default_factory=Background)
    _ids: Any = field(default_factory=lambda: itertools.count(1))

    def add(self, from_: str, to: str, body: str, sent_at: datetime, direction: str = "inbound",
            sid: str | None = None) -> dict[str, Any]:
        """Put a message in the account's history (as if Twilio had carried it)."""
        sid = sid or f"SM{secrets.token_hex(16)}"
        message = {
            "sid": sid, "account_sid": self.account_sid, "from": from_, "to": to, "body": body,
            "direction": direction, "status": "received" if direction == "inbound" else "delivered",
            "date_created": format_datetime(sent_at), "date_updated": format_datetime(sent_at),
            "date_sent": format_datetime(sent_at), "num_segments": "1", "num_media": "0",
            "api_version": "2010-04-01", "price": None, "price_unit": "USD", "error_code": None,
            "error_message": None, "messaging_service_sid": None,
            "uri": f"/2010-04-01/Accounts/{self.account_sid}/Messages/{sid}.json", "subresource_uris": {},
            "_sent_at": sent_at,
        }
        self.messages.append(message)
        return message

    def add_call(self, sid: str, to: str = "", from_: str = "", direction: str = "inbound") -> dict[str, Any]:
        """Register a call Twilio carries (an inbound call, which a test may then transfer)."""
        now = format_datetime(datetime.now(UTC))
        call = {"sid": sid, "account_sid": self.account_sid, "to": to, "from": from_, "status": "in-progress",
                "direction": direction, "answered_by": None, "date_created": now, "date_updated": now,
                "start_time": now, "end_time": None, "duration": None, "price": None, "price_unit": "USD",
                "api_version": "2010-04-01", "uri": f"/2010-04-01/Accounts/{self.account_sid}/Calls/{sid}.json",
                "subresource_uris": {}}
        self.calls[sid] = call
        return call

    def app(self) -> web.Application:
        app = web.Application()
        path = f"/2010-04-01/Accounts/{self.account_sid}/Messages.json"
        app.router.add_get(path, self._list)
        app.router.add_post(path, self._create)
        calls = f"/2010-04-01/Accounts/{self.account_sid}/Calls"
        app.router.add_post(calls + ".json", self._create_call)
        app.router.add_post(calls + "/{sid}.json", self._update_call)
        app.router.add_get(calls + "/{sid}.json", self._fetch_call)
        app.on_shutdown.append(self._background.stop)
        return app

    async def _create_call(self, request: web.Request) -> web.Response:
        if not self._authorised(request):
            return _error(401, 20003, "Authenticate")
        form = await request.post()
        if self.fail_calls is not None:
            return _error(self.fail_calls, 21210, "The source phone number provided is not yet verified.")
        fields = {key: str(form.get(key, "")) for key in form}
        fields["StatusCallbackEvent"] = " ".join(str(v) for v in form.getall("StatusCallbackEvent", []))
        if not fields.get("To") or not fields.get("From") or not (fields.get("Twiml") or fields.get("Url")):
            return _error(400, 21205, "A 'To', a 'From' and a 'Url' or 'Twiml' are required.")
        call = self.add_call("CA" + secrets.token_hex(16), fields["To"], fields["From"], "outbound-api")
        call["status"] = "queued"
        call["_form"] = fields
        if self.on_call is not None:
            self._background.start(self.on_call(call))
        return web.json_response(_public(call), status=201)

    async def _update_call(self, request: web.Request) -> web.Response:
        if not self._authorised(request):
            return _error(401, 20003, "Authenticate")
        form = {key: str(value) for key, value in (await request.post()).items()}
        call = self.calls.get(request.match_info["sid"])
        if self.fail_calls is not None:
            return _error(self.fail_calls, 20500, "Internal Server Error")
        if call is None:
            return _error(404, 20404, "The requested resource was not found")
        self.call_updates.append((call["sid"], form))
        if form.get("Status") in ("completed", "canceled"):
            call["status"] = form["Status"]
        if self.on_update is not None:
            await self.on_update(call, form)
        return web.json_response(_public(call))

    async def _fetch_call(self, request: web.Request) -> web.Response:
        if not self._authorised(request):
            return _error(401, 20003, "Authenticate")
        call = self.calls.get(request.match_info["sid"])
        if call is None:
            return _error(404, 20404, "The requested resource was not found")
        return web.json_response(_public(call))

    def _authorised(self, request: web.Request) -> bool:
        header = request.headers.get("Authorization", "")
        if not header.startswith("Basic "):
            return False
        try:
            user, _, password = base64.b64decode(header[6:]).decode().partition(":")
        except ValueError:
            return False
        return (user, password) == (self.account_sid, self.auth_token)

    async def _list(self, request: web.Request) -> web.Response:
        if not self._authorised(request):
            return _error(401, 20003, "Authenticate")
        query = dict(request.query)
        self.list_queries.append(query)
        if self.fail_list is not None:
            return _error(self.fail_list, 20500, "Internal Server Error")
        after = _date(query.get("DateSent>"))
        before = _date(query.get("DateSent<"))
        found = [
            m for m in self.messages
            if m["from"] == query.get("From", m["from"]) and m["to"] == query.get("To", m["to"])
            and (after is None or m["_sent_at"] >= after) and (before is None or m["_sent_at"] < before)
        ]
        found.sort(key=lambda m: m["_sent_at"], reverse=True)  # newest first, as Twilio lists them
        size = int(query.get("PageSize", "50"))
        page = int(query.get("Page", "0"))
        chunk = found[page * size : (page + 1) * size]
        base = request.path
        next_uri = None
        if (page + 1) * size < len(found):
            next_uri = f"{base}?{urlencode({**query, 'Page': page + 1, 'PageToken': f'PA{page + 1}'})}"
        return web.json_response({
            "messages": [_public(m) for m in chunk],
            "page": page, "page_size": size, "start": page * size, "end": page * size + len(chunk),
            "uri": f"{base}?{urlencode(query)}", "first_page_uri": f"{base}?{urlencode({**query, 'Page': 0})}",
            "next_page_uri": next_uri, "previous_page_uri": None,
        })

    async def _create(self, request: web.Request) -> web.Response:
        if not self._authorised(request):
            return _error(401, 20003, "Authenticate")
        form = await request.post()
        if self.fail_create is not None:
            return _error(self.fail_create, 20500, "Internal Server Error")
        to, from_, body = str(form.get("To", "")), str(form.get("From", "")), str(form.get("Body", ""))
        if not to or not from_ or not body:
            return _error(400, 21602, "Message body is required.")
        message = self.add(from_, to, body, datetime.now(UTC), direction="outbound-api")
        message["status"] = "queued"
        self.created.append(message)
        return web.json_response(_public(message), status=201)


def _public(message: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in message.items() if not key.startswith("_")}


def _date(value: str | None) -> datetime | None:
    if not value:
        return None
    parsed = datetime.fromisoformat(value)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _error(status: int, code: int, message: str) -> web.Response:
    return web.json_response({"code": code, "message": message, "more_info": f"https://www.twilio.com/docs/errors/{code}",
                              "status": status}, status=status)


@contextlib.asynccontextmanager
async def twilio_rest_standin(account_sid: str, auth_token: str) -> AsyncIterator[tuple[TwilioRestStandIn, str]]:
    """Serve a Twilio REST stand-in on loopback; yields it and its base URL (``TWILIO_API_BASE_URL``)."""
    standin = TwilioRestStandIn(account_sid, auth_token)
    async with serve_on_loopback(standin.app()) as address:
        yield standin, f"http://{address}"
