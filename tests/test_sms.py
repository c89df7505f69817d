"""SMS auto-reply: the webhook answered at once, the thread the model reads, the reply, failures, retries."""

from __future__ import annotations

import asyncio
import contextlib
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest
from sqlalchemy import select
from support import CALLER, SECRET_KEY, make_config, start_relay, start_standin, until

from callers import mask_number
from phones import sms
from standins.openai_service import RealtimeStandIn, rest_base_url
from standins.phone_dialects import twilio_signature
from standins.twilio_rest import TwilioRestStandIn, twilio_rest_standin
from store.database import Database
from store.schema import sms_messages

ACCOUNT = "AC" + "5" * 32
TOKEN = "twilio-token-for-sms-tests"
OURS = "+14155550199"
PUBLIC = "http://127.0.0.1"
EMPTY = '<?xml version="1.0" encoding="UTF-8"?><Response />'


async def _sms_relay(stack: contextlib.AsyncExitStack, **overrides: Any) -> tuple[str, RealtimeStandIn,
                                                                                  TwilioRestStandIn]:
    standin, url = await start_standin(stack)
    rest, rest_url = await stack.enter_async_context(twilio_rest_standin(ACCOUNT, TOKEN))
    values: dict[str, Any] = {"twilio_account_sid": ACCOUNT, "twilio_auth_token": TOKEN,
                              "twilio_api_base_url": rest_url, "openai_base_url": rest_base_url(url),
                              "public_url": PUBLIC, "tools": ()}
    base = await start_relay(stack, make_config(url, **{**values, **overrides}))
    return base, standin, rest


async def _text(http: aiohttp.ClientSession, base: str, body: str, sender: str = CALLER, sid: str | None = None,
                token: str | None = TOKEN) -> tuple[int, str]:
    form = {"MessageSid": sid or f"SM{time.monotonic_ns()}", "AccountSid": ACCOUNT, "From": sender, "To": OURS,
            "Body": body, "NumMedia": "0"}
    headers = {"X-Twilio-Signature": twilio_signature(token, PUBLIC + "/sms", form)} if token else {}
    async with http.post(base + "/sms", data=form, headers=headers) as resp:
        return resp.status, await resp.text()


async def test_signed_webhook_gets_empty_twiml_before_a_slow_model(stack: contextlib.AsyncExitStack,
                                                                   http: aiohttp.ClientSession) -> None:
    """With the model taking 5 s, Twilio gets an empty <Response/> at once; the reply follows by REST from the number
    texted to the sender, at most 320 characters, with no URL."""
    base, standin, rest = await _sms_relay(stack)
    standin.web_search.delay_ms = 5000
    started = time.monotonic()
    status, twiml = await _text(http, base, "What's the weather in Paris?")
    answered_in = time.monotonic() - started
    assert (status, twiml) == (200, EMPTY)
    assert answered_in < 1.0 and rest.created == []  # nothing was waited for
    await until(lambda: rest.created, timeout=10, what="the reply")
    [reply] = rest.created
    assert (reply["from"], reply["to"]) == (OURS, CALLER)
    assert reply["body"] == "It is sunny in Paris today, around 18 degrees (Météo-France)."
    [request] = standin.responses_requests
    assert request.problems == [] and request.body["tool_choice"] == "required"


async def test_unsigned_restricted_and_unconfigured(stack: contextlib.AsyncExitStack,
                                                    http: aiohttp.ClientSession) -> None:
    """An unsigned or wrongly signed webhook gets 403; a sender on no allowlist and a relay without REST credentials
    get a <Message> saying so, and nothing is sent."""
    base, standin, rest = await _sms_relay(stack)
    assert (await _text(http, base, "hi", token=None))[0] == 403
    assert (await _text(http, base, "hi", token="not-the-token"))[0] == 403
    status, twiml = await _text(http, base, "hi", sender="+12125550123")
    assert (status, twiml) == (200, '<?xml version="1.0" encoding="UTF-8"?><Response><Message>Sorry, this SMS line is '
                                    'restricted.</Message></Response>')
    unconfigured = await start_relay(stack, make_config(twilio_auth_token=TOKEN, public_url=PUBLIC))
    status, twiml = await _text(http, unconfigured, "hi")
    assert (status, twiml) == (200, '<?xml version="1.0" encoding="UTF-8"?><Response><Message>Sorry, SMS auto-reply '
                                    'is not configured.</Message></Response>')
    await asyncio.sleep(0.2)
    assert rest.created == [] and rest.list_queries == [] and standin.responses_requests == []


async def test_the_model_reads_the_thread(stack: contextlib.AsyncExitStack, http: aiohttp.ClientSession) -> None:
    """The last 12 hours with this sender, both directions, at most 10 messages in time order, the current one last
    and counted once although Twilio already lists it; other people's messages and older ones left out."""
    base, standin, rest = await _sms_relay(stack)
    now = datetime.now(UTC)
    rest.add(CALLER, OURS, "from yesterday", now - timedelta(hours=13))
    rest.add("+14155550111", OURS, "someone else", now - timedelta(minutes=5))
    for i in range(12):
        sender, to = (CALLER, OURS) if i % 2 == 0 else (OURS, CALLER)
        direction = "inbound" if i % 2 == 0 else "outbound-api"
        rest.add(sender, to, f"message {i}", now - timedelta(minutes=60 - i), direction)
    rest.add(CALLER, OURS, "And tomorrow?", now, sid="SMcurrent")
    await _text(http, base, "And tomorrow?", sid="SMcurrent")
    await until(lambda: rest.created, timeout=10, what="the reply")
    [request] = standin.responses_requests
    assert request.body["input"] == "\n".join([
        "Text messages with this person in the last 12 hours, oldest first:",
        *(f"{'them' if i % 2 == 0 else 'you'}: message {i}" for i in range(3, 12)),
        "Their latest message, to answer now: And tomorrow?",
    ])
    assert all(q["DateSent>"] < now.isoformat() for q in rest.list_queries)


async def test_apology_on_model_failure_and_on_rest_failure(stack: contextlib.AsyncExitStack,
                                                            http: aiohttp.ClientSession,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    """A failing model or a failing thread fetch gets one short apology that reveals nothing; when even the apology
    cannot be sent it is logged and dropped; the message body is never logged above DEBUG."""
    base, standin, rest = await _sms_relay(stack)
    standin.web_search.status = 500
    await _text(http, base, "secret question one")
    await until(lambda: len(rest.created) == 1, timeout=10, what="the apology for the model")
    standin.web_search.status = 200
    rest.fail_list = 500
    await _text(http, base, "secret question two")
    await until(lambda: len(rest.created) == 2, timeout=10, what="the apology for the REST failure")
    assert [m["body"] for m in rest.created] == [sms.APOLOGY_TEXT] * 2
    rest.fail_create = 500
    await _text(http, base, "secret question three")
    await until(lambda: "sms apology to +*******0100 not sent (TwilioRestException HTTP 500)" in caplog.text,
                timeout=10, what="the dropped apology logged")
    assert len(rest.created) == 2
    assert not [r for r in caplog.records if r.levelno > 10 and "secret question" in r.getMessage()]
    assert "sms reply to +*******0100 failed (ToolError)" in caplog.text


async def test_a_retried_webhook_is_answered_once(stack: contextlib.AsyncExitStack,
                                                  http: aiohttp.ClientSession) -> None:
    """Twilio retrying a webhook (same MessageSid) gets an empty answer and no second reply."""
    base, _standin, rest = await _sms_relay(stack)
    assert (await _text(http, base, "hello", sid="SMretry"))[1] == EMPTY
    assert (await _text(http, base, "hello", sid="SMretry"))[1] == EMPTY
    await until(lambda: rest.created, timeout=10, what="the reply")
    await asyncio.sleep(0.3)
    assert len(rest.created) == 1


@pytest.mark.parametrize(
    ("text", "short"),
    [
        pytest.param("Sunny today.", "Sunny today.", id="short"),
        pytest.param("word " * 100, ("word " * 64).strip() + "…", id="cut-at-a-space"),
        pytest.param("a" * 400, "a" * 319 + "…", id="one-long-word"),
        pytest.param(("x" * 318) + " tail", ("x" * 318) + "…", id="no-partial-word"),
    ],
)
def test_replies_are_shortened_at_word_boundaries(text: str, short: str) -> None:
    """A reply longer than 320 characters is cut at a word boundary (never mid-word) and marked."""
    assert sms.shorten(text) == short
    assert len(sms.shorten(text)) <= 320


async def test_a_text_and_its_reply_are_recorded(database_url: str, stack: contextlib.AsyncExitStack,
                                                 http: aiohttp.ClientSession) -> None:
    """With the records on, the text received and the reply sent are kept, newest first, the number masked."""
    base, _standin, rest = await _sms_relay(stack, database_url=database_url)
    assert (await _text(http, base, "What's the weather in Paris?"))[0] == 200
    await until(lambda: rest.created, timeout=10, what="the reply")
    db = Database(database_url, SECRET_KEY.encode())
    stack.push_async_callback(db.close)

    async def both() -> list[dict[str, Any]] | None:
        texts = await db.recent_texts(db.key_of(CALLER), 5)
        return texts if len(texts) == 2 else None

    texts = await until(both, what="both texts recorded")
    assert [(t["direction"], t["body"]) for t in texts] == [("out", rest.created[0]["body"]),
                                                           ("in", "What's the weather in Paris?")]
    async with db.engine.connect() as connection:
        numbers = (await connection.execute(select(sms_messages.c.number))).scalars().all()
    assert numbers == [mask_number(CALLER)] * 2
