"""Tools the assistant can call: one registry of name -> (JSON schema, async handler).

The bridge (``bridge.Call``) never imports a tool by name. It loads ``definitions(names)`` into
the Realtime session, and for each ``function_call`` item it receives it awaits
``run_tool(name, arguments, ctx, enabled)``, which always returns the output to send back (errors
included) and never raises. A handler gets what it needs through ``ToolContext``: the
call it may act on (``CallControl``), the caller's email recipient, the SMTP server, the
shared OpenAI client.

Sources: OpenAI Realtime GA docs (function tools: ``{"type": "function", "name",
"description", "parameters"}``; answer with a ``function_call_output`` item, then
``response.create``); OpenAI Responses API docs (``web_search`` tool).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import smtplib
import ssl
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import Any, Protocol
from urllib.parse import urlsplit

import httpx2  # the openai SDK's HTTP client (only its in-memory transport is used here)
import openai

from mailserver import SmtpSecurity, SmtpServer

logger = logging.getLogger("tools")

MIC_SWITCH_DEBOUNCE_S = 2.0
"""A microphone mode request within this long of the last applied switch is ignored."""


class ToolError(Exception):
    """A tool could not do its job; the message goes back to the model as the error."""


# --- What a tool may ask of its call ------------------------------------------------------


class CallControl(Protocol):
    """The call a tool runs in (``bridge.Call`` implements it)."""

    @property
    def noise_reduction(self) -> str:
        """The input noise reduction the service has confirmed: near_field, far_field or off."""
        ...

    def hang_up_after_goodbye(self, reason: str) -> None:
        """Hang up once the assistant's goodbye has been played to the caller."""
        ...

    def transfer_after_line(self, reason: str) -> str:
        """Put the caller through to a person once the assistant's one line has played; returns whom (for
        the model's line: "a colleague").

        Raises:
            ToolError: this call has no transfer destination, or is already ending.
        """
        ...

    async def switch_noise_reduction(self, mode: str) -> None:
        """Send the partial ``session.update`` and return once ``session.updated`` confirms it.

        Raises:
            ToolError: the service refused the update or did not confirm it in time.
        """
        ...


@dataclass(slots=True)
class MicState:
    """One call's microphone-mode switches (``update_mic_distance``)."""

    last_switch_at: float | None = None
    """Monotonic time of the last applied switch."""
    applied: int = 0
    noops: int = 0
    """Requests for the mode already in force."""
    ignored: int = 0
    """Requests within ``MIC_SWITCH_DEBOUNCE_S`` of the last switch."""
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


@dataclass(slots=True)
class ToolContext:
    """What handlers may use; one per call."""

    call: CallControl
    email_to: str | None = None
    """The recipient for this caller's group, or None when the group has none."""
    smtp: SmtpServer | None = None
    openai_client: openai.AsyncOpenAI | None = None
    """Shared by every call of the process (one connection pool)."""
    web_search_model: str = "gpt-5.2"
    timeouts: Mapping[str, float] = field(default_factory=dict)
    """Per-tool deadline overrides in seconds (name -> s)."""
    mic: MicState = field(default_factory=MicState)
    now: Callable[[], float] = time.monotonic

    def deadline_s(self, name: str) -> float:
        """Seconds tool ``name`` may run: its ``timeouts`` override, else the registry's."""
        return self.timeouts.get(name, TOOLS[name].timeout_s)


Handler = Callable[[dict[str, Any], ToolContext], Awaitable[dict[str, Any]]]


@dataclass(frozen=True, slots=True)
class Tool:
    """One function the model may call."""

    name: str
    description: str
    parameters: dict[str, Any]
    """JSON schema of the arguments object."""
    handler: Handler
    timeout_s: float
    """Deadline for the handler; past it the model gets an error output."""

    def definition(self) -> dict[str, Any]:
        """The Realtime session's function tool entry."""
        return {"type": "function", "name": self.name, "description": self.description, "parameters": self.parameters}


# --- The handlers ----------------------------------------------------------------------------


def _text(args: dict[str, Any], name: str, *, required: bool = True, max_len: int = 10_000) -> str:
    value = args.get(name)
    if value is None and not required:
        return ""
    if not isinstance(value, str) or (required and not value.strip()):
        raise ToolError(f"argument {name!r} must be a non-empty string")
    if len(value) > max_len:
        raise ToolError(f"argument {name!r} is longer than {max_len} characters")
    return value.strip()


async def end_call(args: dict[str, Any], ctx: ToolContext) -> dict[str, Any]:
    """Hang up after the goodbye: the line closes once the caller has heard it all."""
    reason = _text(args, "reason", required=False, max_len=500) or "the caller said goodbye"
    ctx.call.hang_up_after_goodbye(reason)
    return {"status": "ending", "instruction": "Say one brief goodbye now; the line closes when it has played."}


async def transfer_call(args: dict[str, Any], ctx: ToolContext) -> dict[str, Any]:
    """Put the caller through to a person after one short line; the destination is the operator's, never
    the model's."""
    reason = _text(args, "reason", max_len=300)
    whom = ctx.call.transfer_after_line(reason)
    return {"status": "transferring", "instruction": f"Say one short line now, such as \"I'll put you through "
            f"to {whom} now\"; the call is transferred once it has played. Do not say anything after it."}


async def update_mic_distance(args: dict[str, Any], ctx: ToolContext) -> dict[str, Any]:
    """Switch input noise reduction between handset (near_field) and speakerphone (far_field)."""
    mode = args.get("mode")
    if mode not in ("near_field", "far_field"):
        raise ToolError("argument 'mode' must be near_field or far_field")
    reason = _text(args, "reason", required=False, max_len=500)
    mic = ctx.mic
    async with mic.lock:  # two requests in one response must not both switch
        now = ctx.now()
        previous = ctx.call.noise_reduction
        if mic.last_switch_at is not None and now - mic.last_switch_at < MIC_SWITCH_DEBOUNCE_S:
            mic.ignored += 1
            status, why = "noop", f"ignored: switched less than {MIC_SWITCH_DEBOUNCE_S:g} s ago"
        elif previous == mode:
            mic.noops += 1
            status, why = "noop", f"already {mode}"
        else:
            await ctx.call.switch_noise_reduction(mode)
            mic.last_switch_at = now
            mic.applied += 1
            status, why = "applied", reason or f"switched to {mode}"
        return {
            "status": status,
            "mode": ctx.call.noise_reduction,
            "previous_mode": previous,
            "reason": why,
            "counters": {"applied": mic.applied, "noop": mic.noops, "ignored": mic.ignored},
        }


async def send_email(args: dict[str, Any], ctx: ToolContext) -> dict[str, Any]:
    """Send an HTML-only email to the caller's address on file."""
    subject = _text(args, "subject", max_len=200)
    body_html = _text(args, "body_html", max_len=100_000)
    if ctx.smtp is None or not ctx.email_to:
        return {"sent": False, "error": "email is not configured for this caller"}
    message = build_email(ctx.smtp.sender, ctx.email_to, subject, body_html)
    try:  # smtplib blocks: run it on a worker thread so the calls' audio keeps flowing
        await asyncio.to_thread(_smtp_send, ctx.smtp, message, ctx.deadline_s("send_email"))
    except smtplib.SMTPAuthenticationError as exc:
        logger.warning("send_email: SMTP login refused by %s (code %s)", ctx.smtp.host, exc.smtp_code)
        raise ToolError("the email could not be sent: the mail server refused the login") from exc
    except (smtplib.SMTPException, OSError) as exc:
        logger.warning("send_email via %s:%d failed: %s", ctx.smtp.host, ctx.smtp.port, type(exc).__name__)
        raise ToolError(f"the email could not be sent ({type(exc).__name__})") from exc
    return {"sent": True, "to": "the caller's email address on file", "subject": subject}


def build_email(sender: str, to: str, subject: str, body_html: str) -> EmailMessage:
    """An HTML-only message (a single ``text/html`` part, no plain-text alternative) carrying
    ``X-From-Ai-Assistant: true``."""
    message = EmailMessage()
    message["From"] = sender
    message["To"] = to
    message["Subject"] = subject.replace("\r", " ").replace("\n", " ")
    message["Date"] = formatdate(localtime=True)
    message["Message-ID"] = make_msgid()
    message["X-From-Ai-Assistant"] = "true"
    message.set_content(body_html, subtype="html")
    return message


def _smtp_send(server: SmtpServer, message: EmailMessage, timeout_s: float) -> None:
    """Blocking SMTP exchange (run on a thread). Raises smtplib.SMTPException or OSError."""
    context = ssl.create_default_context()
    smtp: smtplib.SMTP
    if server.security is SmtpSecurity.SSL:
        smtp = smtplib.SMTP_SSL(server.host, server.port, timeout=timeout_s, context=context)
    else:
        smtp = smtplib.SMTP(server.host, server.port, timeout=timeout_s)
    with smtp:
        if server.security is SmtpSecurity.STARTTLS:
            smtp.starttls(context=context)
        if server.user:
            smtp.login(server.user, server.password or "")
        smtp.send_message(message)


SPEECH_INSTRUCTIONS = (
    "You answer a question for a voice assistant on a phone call; your answer is read aloud. "
    "Search the web, then answer in one to three short spoken sentences of plain text: no URLs, "
    "no markdown, no lists, no citations in brackets. If you rely on a source, name it briefly "
    "in the sentence, e.g. 'according to the BBC'."
)

_MARKDOWN_LINK = re.compile(r"\[([^\]]*)\]\((?:[^()]|\([^)]*\))*\)")
_URL = re.compile(r"(?:https?://|www\.)[^\s()<>\[\]]*[^\s()<>\[\].,;:!?'\"]", re.IGNORECASE)
_MARKUP = re.compile(r"[*_#`>]+|^\s*[-•]\s+", re.MULTILINE)
_EMPTY_BRACKETS = re.compile(r"\(\s*\)|\[\s*\]")


def for_speech(text: str) -> str:
    """Text fit to be read aloud: markdown links become their label, bare URLs and markdown
    symbols go, whitespace collapses."""
    text = _MARKDOWN_LINK.sub(r"\1", text)
    text = _URL.sub("", text)
    text = _MARKUP.sub("", text)
    text = _EMPTY_BRACKETS.sub("", text)
    text = re.sub(r"\s+([.,;:!?])", r"\1", text)
    return re.sub(r"\s+", " ", text).strip()


def source_label(response: Any) -> str | None:
    """A short spoken label for the first cited source: its site name (``bbc.co.uk``)."""
    for item in getattr(response, "output", None) or []:
        if getattr(item, "type", None) != "message":
            continue
        for part in getattr(item, "content", None) or []:
            for note in getattr(part, "annotations", None) or []:
                url = getattr(note, "url", None)
                if getattr(note, "type", None) == "url_citation" and url:
                    host = urlsplit(url).hostname or ""
                    return host.removeprefix("www.") or None
    return None


async def web_answer(
    client: openai.AsyncOpenAI,
    model: str,
    question: str,
    instructions: str,
    location: dict[str, str] | None = None,
    max_output_tokens: int = 600,
) -> tuple[str, str | None]:
    """One Responses API call with the ``web_search`` tool forced (``tool_choice: required``): the
    core of ``gpt_web_search`` and of the SMS reply.

    Args:
        question: what the model answers (a question, or a whole conversation as text).
        instructions: how to write the answer.
        location: ``city``, ``region``, ``country`` (ISO), ``timezone`` (IANA), for the search.

    Returns:
        The answer as plain text (``for_speech``: no URLs, no markdown) and the cited site's name
        (None when nothing was cited).

    Raises:
        ToolError: the API answered an error, could not be reached, or returned no text (logged
            once, without the question).
    """
    tool: dict[str, Any] = {"type": "web_search"}
    if location:
        tool["user_location"] = {"type": "approximate", **location}
    try:
        response = await client.responses.create(
            model=model,
            input=question,
            instructions=instructions,
            tools=[tool],  # type: ignore[list-item]
            tool_choice="required",
            max_output_tokens=max_output_tokens,
        )
    except openai.APIStatusError as exc:
        logger.warning("web search: Responses API answered HTTP %d", exc.status_code)
        raise ToolError(f"the web search failed (HTTP {exc.status_code})") from exc
    except openai.APIError as exc:
        logger.warning("web search: %s", type(exc).__name__)
        raise ToolError(f"the web search failed ({type(exc).__name__})") from exc
    answer = for_speech(response.output_text)
    if not answer:
        raise ToolError("the web search returned no answer")
    return answer, source_label(response)


async def gpt_web_search(args: dict[str, Any], ctx: ToolContext) -> dict[str, Any]:
    """Search the web with the OpenAI Responses API and return an answer written for speech."""
    query = _text(args, "query", max_len=1000)
    if ctx.openai_client is None:
        return {"error": "web search is not configured"}
    location = args.get("user_location")
    where: dict[str, str] = {}
    if isinstance(location, dict):
        known = {key: location.get(key) for key in ("city", "region", "country", "timezone")}
        where = {key: value for key, value in known.items() if isinstance(value, str) and value.strip()}
    answer, source = await web_answer(ctx.openai_client, ctx.web_search_model, query, SPEECH_INSTRUCTIONS, where)
    result: dict[str, Any] = {"answer": answer}
    if source:
        result["source"] = source
    return result


_SAMPLE_RESPONSE = {
    # Shaped like a real answer, citation included: the SDK builds each part's parser on first
    # sight, and a first cited answer after a citation-less warm-up cost 90 ms of CPU (3 ms after).
    "id": "resp_warm_up",
    "object": "response",
    "created_at": 0,
    "status": "completed",
    "model": "warm-up",
    "instructions": SPEECH_INSTRUCTIONS,
    "output": [
        {
            "type": "web_search_call",
            "id": "ws_warm_up",
            "status": "completed",
            "action": {"type": "search", "query": "warm-up"},
        },
        {
            "type": "message",
            "id": "msg_warm_up",
            "status": "completed",
            "role": "assistant",
            "content": [
                {
                    "type": "output_text",
                    "text": "ok",
                    "annotations": [
                        {"type": "url_citation", "url": "https://example.com/", "title": "ok", "start_index": 0,
                         "end_index": 2}
                    ],
                }
            ],
        },
    ],
    "parallel_tool_calls": True,
    "tool_choice": "required",
    "tools": [{"type": "web_search", "user_location": {"type": "approximate", "city": "Paris", "country": "FR"}}],
    "error": None,
    "incomplete_details": None,
    "metadata": {},
    "temperature": 1.0,
    "top_p": 1.0,
}


async def warm_up_web_search(model: str) -> None:
    """Run one ``responses.create`` against an in-memory transport (no network).

    The SDK builds its request and response models on first use: ~75 ms of CPU measured on
    the first search, during which every live call's audio would stall. Startup pays it
    instead. Safe to cancel.
    """
    transport = httpx2.MockTransport(lambda request: httpx2.Response(200, json=_SAMPLE_RESPONSE))
    http_client = openai.DefaultAsyncHttpxClient(transport=transport)
    client = openai.AsyncOpenAI(api_key="warm-up", base_url="http://warm-up.invalid/v1", http_client=http_client)
    with _quiet("httpx2", "httpcore2", "openai"):  # no "HTTP Request: POST warm-up.invalid" at INFO
        async with client:
            response = await client.responses.create(
                model=model,
                input="warm-up",
                instructions=SPEECH_INSTRUCTIONS,
                tools=[{"type": "web_search", "user_location": {"type": "approximate", "city": "Paris"}}],
                tool_choice="required",
                max_output_tokens=16,
            )
            for_speech(response.output_text)
            source_label(response)


@contextlib.contextmanager
def _quiet(*names: str) -> Iterator[None]:
    """Raise these loggers to WARNING for the duration (startup only: no call is live)."""
    loggers = [logging.getLogger(name) for name in names]
    levels = [log.level for log in loggers]
    for log in loggers:
        log.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for log, level in zip(loggers, levels, strict=True):
            log.setLevel(level)


# --- The registry ----------------------------------------------------------------------------

_REASON = {"type": "string", "description": "Short reason, for the log."}

TOOLS: dict[str, Tool] = {
    tool.name: tool
    for tool in (
        Tool(
            "end_call",
            "End the phone call. Call it when the caller says goodbye or asks to hang up "
            "('bye', 'hang up', 'end the call', 'that's all'). If you have not said goodbye "
            "yet, you will then say one brief goodbye; the line closes after it.",
            {"type": "object", "properties": {"reason": _REASON}, "required": [], "additionalProperties": False},
            end_call,
            timeout_s=2.0,
        ),
        Tool(
            "update_mic_distance",
            "Adapt the microphone noise reduction. Use far_field when the caller is on "
            "speakerphone, a laptop or car Bluetooth ('you're on speaker', 'I'm in the car'), "
            "near_field when back on the handset ('taking you off speaker'). Then confirm "
            "briefly.",
            {
                "type": "object",
                "properties": {"mode": {"type": "string", "enum": ["near_field", "far_field"]}, "reason": _REASON},
                "required": ["mode"],
                "additionalProperties": False,
            },
            update_mic_distance,
            timeout_s=5.0,
        ),
        Tool(
            "send_email",
            "Email the caller (to their address on file) when they ask ('email me that'). "
            "Write a short subject and an HTML body with the relevant part of the conversation.",
            {
                "type": "object",
                "properties": {
                    "subject": {"type": "string", "description": "Short subject line."},
                    "body_html": {"type": "string", "description": "The body as simple HTML."},
                },
                "required": ["subject", "body_html"],
                "additionalProperties": False,
            },
            send_email,
            timeout_s=20.0,
        ),
        Tool(
            "gpt_web_search",
            "Look up current facts on the web (news, weather, opening hours, prices, "
            "anything recent). Say a brief 'one moment' before calling it.",
            {
                "type": "object",
                "properties": {
                    "query": {"type": "string", "description": "What to search for, as a full question."},
                    "user_location": {
                        "type": "object",
                        "description": "Where the caller is, when known or relevant.",
                        "properties": {
                            "city": {"type": "string"},
                            "region": {"type": "string"},
                            "country": {"type": "string", "description": "ISO 3166-1 alpha-2, e.g. US."},
                            "timezone": {"type": "string", "description": "IANA zone, e.g. America/Chicago."},
                        },
                        "additionalProperties": False,
                    },
                },
                "required": ["query"],
                "additionalProperties": False,
            },
            gpt_web_search,
            timeout_s=15.0,
        ),
        Tool(
            "transfer_call",
            "Put the caller through to a person. Call it when the caller asks for a human, or when you "
            "cannot help and a person can. You will then say one short line; the call is transferred after it.",
            {
                "type": "object",
                "properties": {"reason": {"type": "string", "description": "One sentence for the person who "
                                          "picks up: who is calling and what they need."}},
                "required": ["reason"],
                "additionalProperties": False,
            },
            transfer_call,
            timeout_s=2.0,
        ),
    )
}
"""Every tool, by name."""


def definitions(names: tuple[str, ...]) -> list[dict[str, Any]]:
    """The session's ``tools`` list for the enabled ``names``.

    Raises:
        KeyError: a name is not in ``TOOLS``.
    """
    return [TOOLS[name].definition() for name in names]


async def run_tool(name: str, arguments: str, ctx: ToolContext, enabled: tuple[str, ...]) -> dict[str, Any]:
    """Run one function call and return its output object; never raises (but is cancellable).

    Args:
        name: the function name the model called.
        arguments: the JSON arguments string from the ``function_call`` item.
        ctx: the call's context.
        enabled: the tools this process offers (a call to any other is an error).

    Returns:
        ``{"ok": true, ...handler result}`` or ``{"ok": false, "error": "..."}`` for an unknown
        tool, arguments that are not a JSON object, a ``ToolError``, an unexpected exception
        (logged with its traceback) or a handler past its deadline.
    """
    tool = TOOLS.get(name)
    if tool is None or name not in enabled:
        return {"ok": False, "error": f"unknown tool {name!r}"}
    try:
        args = json.loads(arguments or "{}")
    except ValueError as exc:
        return {"ok": False, "error": f"arguments are not valid JSON ({exc.msg})"}
    if not isinstance(args, dict):
        return {"ok": False, "error": "arguments must be a JSON object"}
    timeout_s = ctx.deadline_s(name)
    try:
        async with asyncio.timeout(timeout_s):
            result = await tool.handler(args, ctx)
    except TimeoutError:
        logger.warning("tool %s timed out after %.1f s", name, timeout_s)
        return {"ok": False, "error": f"{name} did not finish within {timeout_s:g} s"}
    except ToolError as exc:
        return {"ok": False, "error": str(exc)}
    except Exception:
        logger.exception("tool %s failed", name)
        return {"ok": False, "error": f"{name} failed unexpectedly"}
    return {"ok": "error" not in result, **result}
