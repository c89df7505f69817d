"""SMS auto-reply: a text to the number gets a short researched answer that knows the thread.

Twilio POSTs each incoming SMS to ``/sms`` and gives the webhook about 15 s. ``SmsReplies.receive``
answers at once (empty TwiML, or a ``<Message>`` for a restricted or unconfigured sender) and does
the work in an owned background task: fetch the thread with this sender from the last 12 hours
(Twilio REST, both directions), ask the Responses API with web search for a reply of at most 320
characters, send it from the number that received the SMS. A failure gets one short apology SMS.

Sources: Twilio Messaging webhooks (``From``, ``To``, ``Body``, ``MessageSid``) and the Messages
REST resource, through the ``twilio`` package's async client; the OpenAI Responses API through
``tools.web_answer``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import openai
from twilio.base.exceptions import TwilioException
from twilio.http.async_http_client import AsyncTwilioHttpClient
from twilio.rest import Client
from twilio.twiml.messaging_response import MessagingResponse

import tools
from callers import find_caller, mask_number
from config import Config
from tools import ToolError

logger = logging.getLogger(__name__)

SMS_MAX_CHARS = 320
THREAD_WINDOW = timedelta(hours=12)
THREAD_MAX_MESSAGES = 10
"""The thread the model sees: this many messages at most, the current one included."""
MAX_PENDING_REPLIES = 32
"""Replies being worked on at once; past this a sender is told to try again (no background work)."""
REPLY_DEADLINE_S = 60.0
"""The whole background job (thread, model, send); past it the sender gets the apology."""
REST_TIMEOUT_S = 10.0
SEEN_MESSAGE_SIDS = 4096
"""``MessageSid``s remembered so that Twilio's retries of a webhook are answered once."""

RESTRICTED_TEXT = "Sorry, this SMS line is restricted."
NOT_CONFIGURED_TEXT = "Sorry, SMS auto-reply is not configured."
BUSY_TEXT = "Sorry, too many messages at once. Please try again in a minute."
APOLOGY_TEXT = "Sorry, I couldn't answer that just now. Please try again in a little while."

SMS_INSTRUCTIONS = (
    "You answer text messages for a friendly assistant. Search the web when it helps, then reply in "
    "plain text of at most 300 characters: warm, direct, no URLs, no markdown, no lists. If you rely on "
    "a source, name at most one, briefly (e.g. 'per the BBC'). Answer the latest message; the earlier "
    "ones are context."
)


def shorten(text: str, limit: int = SMS_MAX_CHARS) -> str:
    """``text`` in at most ``limit`` characters, cut at a word boundary (never mid-word) and marked
    with an ellipsis when cut."""
    text = " ".join(text.split())
    if len(text) <= limit:
        return text
    cut = text[: limit - 1]
    if " " in cut and text[limit - 1] != " ":
        cut = cut[: cut.rindex(" ")]
    return cut.rstrip(" ,;:-") + "…"


@dataclass(frozen=True, slots=True)
class ThreadMessage:
    """One SMS of the thread with the sender."""

    from_sender: bool
    body: str
    sent_at: datetime
    sid: str


def model_input(thread: list[ThreadMessage]) -> str:
    """The thread as the model reads it: oldest first, the last message marked as the one to answer."""
    earlier = [f"{'them' if m.from_sender else 'you'}: {m.body}" for m in thread[:-1]]
    lines = ["Text messages with this person in the last 12 hours, oldest first:", *earlier] if earlier else []
    lines.append(f"Their latest message, to answer now: {thread[-1].body}")
    return "\n".join(lines)


def twiml_message(text: str | None) -> str:
    """TwiML with one ``<Message>``, or an empty ``<Response/>`` for None."""
    response = MessagingResponse()
    if text is not None:
        response.message(text)
    return str(response.to_xml())


def twilio_client(config: Config) -> tuple[Client, AsyncTwilioHttpClient] | None:
    """The ``twilio`` REST client for SMS (async HTTP, base URL ``TWILIO_API_BASE_URL``); None without
    credentials. Call inside the running loop; close the HTTP client at shutdown."""
    credentials = config.twilio_rest_credentials()
    if credentials is None:
        return None
    http_client = AsyncTwilioHttpClient(timeout=REST_TIMEOUT_S)
    client = Client(credentials[0], credentials[1], config.twilio_account_sid, http_client=http_client)
    client.api.base_url = config.twilio_api_base_url
    return client, http_client


class SmsReplies:
    """The ``/sms`` webhook's work: answer Twilio at once, reply from an owned background task."""

    def __init__(self, config: Config, twilio: Client | None, openai_client: openai.AsyncOpenAI | None) -> None:
        self.config = config
        self.twilio = twilio
        self.openai_client = openai_client
        self.model = config.sms_model or config.web_search_model
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._tasks: set[asyncio.Task[None]] = set()
        self.on_text: Callable[[str, str, str], None] | None = None
        """Told of each text received from an allowed sender and each sent: ``(direction, number, body)``,
        ``in`` or ``out``, the sender's or the recipient's E.164 number (the records)."""

    def receive(self, params: Mapping[str, str]) -> str:
        """One incoming SMS (a signed webhook's form): the TwiML to answer with, at once.

        Returns:
            ``<Message>`` text for a sender on no allowlist, when replies are not configured, or
            when ``MAX_PENDING_REPLIES`` are under way; otherwise an empty ``<Response/>`` and the
            reply follows by REST. A retry of a ``MessageSid`` already received is answered empty.
        """
        sender, ours = params.get("From", ""), params.get("To", "")
        caller = find_caller(self.config, sender)
        if caller is None:
            logger.info("sms from restricted sender %s refused", mask_number(sender))
            return twiml_message(RESTRICTED_TEXT)
        if self.twilio is None or self.openai_client is None:
            return twiml_message(NOT_CONFIGURED_TEXT)
        sid = params.get("MessageSid") or params.get("SmsSid") or ""
        if sid in self._seen:
            logger.info("sms %s already received (a retry); answered once", sid)
            return twiml_message(None)
        self._seen[sid] = None
        while len(self._seen) > SEEN_MESSAGE_SIDS:
            self._seen.popitem(last=False)
        if len(self._tasks) >= MAX_PENDING_REPLIES:
            logger.warning("sms from %s: %d replies already under way", mask_number(sender), len(self._tasks))
            return twiml_message(BUSY_TEXT)
        current = ThreadMessage(True, params.get("Body", ""), datetime.now(UTC), sid)
        self._told("in", caller.number, current.body)
        task = asyncio.create_task(self._reply(caller.number, ours, current), name="sms reply")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return twiml_message(None)

    async def close(self) -> None:
        """Cancel every reply under way and wait for them to end (shutdown)."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _reply(self, sender: str, ours: str, current: ThreadMessage) -> None:
        """Thread, model, send; the apology on any failure. Never raises (but is cancellable)."""
        assert self.twilio is not None and self.openai_client is not None
        started = time.monotonic()
        try:
            async with asyncio.timeout(REPLY_DEADLINE_S):
                thread = await self.fetch_thread(sender, ours, current)
                logger.debug("sms thread with %s: %s", mask_number(sender), [m.body for m in thread])
                answer, _source = await tools.web_answer(self.openai_client, self.model, model_input(thread),
                                                         SMS_INSTRUCTIONS, max_output_tokens=400)
                reply = shorten(answer)
                await self.twilio.messages.create_async(to=sender, from_=ours, body=reply)
                self._told("out", sender, reply)
        except (ToolError, TwilioException, aiohttp.ClientError, TimeoutError) as exc:
            logger.warning("sms reply to %s failed (%s); sending an apology", mask_number(sender), _describe(exc))
            await self._apologise(sender, ours)
            return
        logger.info("sms reply to %s sent in %.1f s (thread of %d)", mask_number(sender),
                    time.monotonic() - started, len(thread))

    def _told(self, direction: str, number: str, body: str) -> None:
        if self.on_text is not None:
            self.on_text(direction, number, body)

    async def fetch_thread(self, sender: str, ours: str, current: ThreadMessage) -> list[ThreadMessage]:
        """The last ``THREAD_MAX_MESSAGES`` messages between ``sender`` and ``ours`` from the last 12
        hours, both directions, in time order, ending with ``current`` (counted once even when the
        list already holds it).

        Raises:
            TwilioException, aiohttp.ClientError: the REST API failed.
        """
        assert self.twilio is not None
        since = current.sent_at - THREAD_WINDOW
        newest = {"date_sent_after": since, "limit": THREAD_MAX_MESSAGES, "page_size": THREAD_MAX_MESSAGES}
        inbound, outbound = await asyncio.gather(  # Twilio lists newest first: ten of each suffice
            self.twilio.messages.list_async(from_=sender, to=ours, **newest),
            self.twilio.messages.list_async(from_=ours, to=sender, **newest),
        )
        thread = [_thread_message(m, from_sender=True) for m in inbound]
        thread += [_thread_message(m, from_sender=False) for m in outbound]
        earlier = sorted((m for m in thread if m.sid != current.sid and m.sent_at >= since), key=lambda m: m.sent_at)
        return [*earlier[-(THREAD_MAX_MESSAGES - 1):], current]

    async def _apologise(self, sender: str, ours: str) -> None:
        assert self.twilio is not None
        try:
            await self.twilio.messages.create_async(to=sender, from_=ours, body=APOLOGY_TEXT)
            self._told("out", sender, APOLOGY_TEXT)
        except (TwilioException, aiohttp.ClientError, TimeoutError) as exc:
            logger.warning("sms apology to %s not sent (%s)", mask_number(sender), _describe(exc))


def _thread_message(message: Any, from_sender: bool) -> ThreadMessage:
    sent = message.date_sent or message.date_created or datetime.now(UTC)
    return ThreadMessage(from_sender, str(message.body or ""), sent, str(message.sid or ""))


def _describe(exc: BaseException) -> str:
    status = getattr(exc, "status", None)
    return f"{type(exc).__name__}" + (f" HTTP {status}" if status else "")
