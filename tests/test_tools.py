"""tools.py: the registry, error outputs, the microphone switch rules, email over real SMTP, web search."""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

import openai
import pytest
from support import smtp_server, smtp_settings, start_standin

import simulate
import tools
from standins.openai_service import client_event_problems, rest_base_url
from tools import ToolContext, ToolError

ALL = tuple(tools.TOOLS)


class PhoneCall:
    """A CallControl whose Realtime service confirms (or never confirms) each switch."""

    def __init__(self, confirms: bool = True) -> None:
        self.mode = "near_field"
        self.confirms = confirms
        self.switches: list[str] = []
        self.ended: list[str] = []

    @property
    def noise_reduction(self) -> str:
        return self.mode

    def hang_up_after_goodbye(self, reason: str) -> None:
        self.ended.append(reason)

    async def switch_noise_reduction(self, mode: str) -> None:
        self.switches.append(mode)
        if not self.confirms:
            await asyncio.Event().wait()
        self.mode = mode


def test_session_tools_validate_against_openai_types() -> None:
    """The four tool definitions form a session.update the openai package accepts, with no unknown field."""
    event = {"type": "session.update", "session": {"type": "realtime", "tools": tools.definitions(ALL),
                                                   "tool_choice": "auto"}}
    assert client_event_problems(event) == []
    assert [tool["name"] for tool in event["session"]["tools"]] == list(ALL)


@pytest.mark.parametrize(
    ("name", "arguments", "enabled", "error"),
    [
        pytest.param("launch_rocket", "{}", ALL, "unknown tool 'launch_rocket'", id="unknown"),
        pytest.param("send_email", "{}", ("end_call",), "unknown tool 'send_email'", id="not-enabled"),
        pytest.param("end_call", "{not json", ALL, "arguments are not valid JSON (Expecting property name enclosed "
                     "in double quotes)", id="bad-json"),
        pytest.param("end_call", "[1]", ALL, "arguments must be a JSON object", id="not-object"),
        pytest.param("send_email", '{"subject": "hi"}', ALL, "argument 'body_html' must be a non-empty string",
                     id="missing-argument"),
        pytest.param("update_mic_distance", '{"mode": "loud"}', ALL, "argument 'mode' must be near_field or far_field",
                     id="bad-enum"),
    ],
)
async def test_bad_calls_get_error_outputs(name: str, arguments: str, enabled: tuple[str, ...], error: str) -> None:
    """Unknown or disabled tools, bad JSON and bad arguments give an error output, never an exception."""
    output = await tools.run_tool(name, arguments, ToolContext(call=PhoneCall()), enabled)
    assert output == {"ok": False, "error": error}


async def test_tool_past_its_deadline_gets_an_error_output() -> None:
    """A handler that does not finish in time is cancelled and answered with an error."""
    ctx = ToolContext(call=PhoneCall(confirms=False), timeouts={"update_mic_distance": 0.05})
    output = await tools.run_tool("update_mic_distance", '{"mode": "far_field"}', ctx, ALL)
    assert output == {"ok": False, "error": "update_mic_distance did not finish within 0.05 s"}


async def test_unexpected_exception_is_an_error_output(caplog: pytest.LogCaptureFixture) -> None:
    """A bug in a handler is logged with its traceback and the model hears a plain error."""
    class Broken(PhoneCall):
        def hang_up_after_goodbye(self, reason: str) -> None:
            raise RuntimeError("boom")

    output = await tools.run_tool("end_call", "{}", ToolContext(call=Broken()), ALL)
    assert output == {"ok": False, "error": "end_call failed unexpectedly"}
    assert any(r.message == "tool end_call failed" and r.exc_info for r in caplog.records)


async def test_mic_switch_applies_ignores_within_2s_and_noops() -> None:
    """A switch is applied once confirmed; a repeat within 2 s is ignored; the current mode is a no-op."""
    clock = [100.0]
    call = PhoneCall()
    ctx = ToolContext(call=call, now=lambda: clock[0])

    async def ask(mode: str) -> dict[str, Any]:
        return await tools.run_tool("update_mic_distance", json.dumps({"mode": mode, "reason": "speaker"}), ctx, ALL)

    first = await ask("far_field")
    assert first == {"ok": True, "status": "applied", "mode": "far_field", "previous_mode": "near_field",
                     "reason": "speaker", "counters": {"applied": 1, "noop": 0, "ignored": 0}}
    clock[0] += 1.0
    assert (await ask("near_field"))["reason"] == "ignored: switched less than 2 s ago"
    clock[0] += 1.5
    same = await ask("far_field")
    assert (same["status"], same["reason"], same["counters"]) == ("noop", "already far_field",
                                                                   {"applied": 1, "noop": 1, "ignored": 1})
    back = await ask("near_field")
    assert (back["status"], back["mode"], back["counters"]["applied"]) == ("applied", "near_field", 2)
    assert call.switches == ["far_field", "near_field"]


async def test_refused_switch_changes_nothing() -> None:
    """When the service refuses the update the output is an error and the mode stays."""
    class Refusing(PhoneCall):
        async def switch_noise_reduction(self, mode: str) -> None:
            raise ToolError("the service refused the switch: bad session")

    call = Refusing()
    ctx = ToolContext(call=call)
    output = await tools.run_tool("update_mic_distance", '{"mode": "far_field"}', ctx, ALL)
    assert output == {"ok": False, "error": "the service refused the switch: bad session"}
    assert call.noise_reduction == "near_field" and ctx.mic.applied == 0


@pytest.mark.parametrize(
    ("text", "spoken"),
    [
        pytest.param("Sunny, 18 °C ([Météo-France](https://meteofrance.com/paris)).",
                     "Sunny, 18 °C (Météo-France).", id="markdown-link"),
        pytest.param("See https://example.com/a?b=c for more.", "See for more.", id="bare-url"),
        pytest.param("**Rain** expected:\n- morning\n- evening", "Rain expected: morning evening", id="markdown"),
        pytest.param("Open until 9 pm (www.shop.example).", "Open until 9 pm.", id="www"),
    ],
)
def test_answers_are_made_for_speech(text: str, spoken: str) -> None:
    """No URL or markdown survives into what the assistant reads aloud."""
    assert tools.for_speech(text) == spoken


async def test_web_search_through_the_responses_standin(stack: contextlib.AsyncExitStack) -> None:
    """gpt_web_search forces the web_search tool, passes the location, and returns a speakable answer."""
    standin, url = await start_standin(stack)
    client = openai.AsyncOpenAI(api_key="sk-test", base_url=rest_base_url(url), max_retries=0)
    stack.push_async_callback(client.close)
    ctx = ToolContext(call=PhoneCall(), openai_client=client, web_search_model="gpt-5.2")
    args = {"query": "weather in Paris today", "user_location": {"city": "Paris", "country": "FR", "zip": 1}}
    output = await tools.run_tool("gpt_web_search", json.dumps(args), ctx, ALL)
    assert output == {"ok": True, "answer": "It is sunny in Paris today, around 18 degrees (Météo-France).",
                      "source": "meteofrance.com"}
    [request] = standin.responses_requests
    assert request.problems == []
    assert request.body["tools"] == [{"type": "web_search", "user_location": {"type": "approximate", "city": "Paris",
                                                                              "country": "FR"}}]
    assert (request.body["tool_choice"], request.body["input"], request.body["model"]) == (
        "required", "weather in Paris today", "gpt-5.2")
    assert "no URLs" in request.body["instructions"]


async def test_web_search_timeout_and_api_error(stack: contextlib.AsyncExitStack) -> None:
    """A slow search ends at its deadline and a failing one reports the HTTP status: both as error outputs."""
    standin, url = await start_standin(stack)
    client = openai.AsyncOpenAI(api_key="sk-test", base_url=rest_base_url(url), max_retries=0)
    stack.push_async_callback(client.close)
    ctx = ToolContext(call=PhoneCall(), openai_client=client, timeouts={"gpt_web_search": 0.2})
    standin.web_search.delay_ms = 2000
    slow = await tools.run_tool("gpt_web_search", '{"query": "news"}', ctx, ALL)
    assert slow == {"ok": False, "error": "gpt_web_search did not finish within 0.2 s"}
    standin.web_search.delay_ms, standin.web_search.status = 0, 500
    failed = await tools.run_tool("gpt_web_search", '{"query": "news"}', ctx, ALL)
    assert failed == {"ok": False, "error": "the web search failed (HTTP 500)"}


async def test_send_email_is_html_only_with_the_assistant_header() -> None:
    """The message reaches the SMTP server after login: one text/html part, X-From-Ai-Assistant: true."""
    with smtp_server() as (mailbox, port):
        ctx = ToolContext(call=PhoneCall(), smtp=smtp_settings(port), email_to="jordan@example.com")
        args = {"subject": "Paris weather", "body_html": "<p>Sunny, <b>18 °C</b>.</p>"}
        output = await tools.run_tool("send_email", json.dumps(args), ctx, ALL)
        assert output == {"ok": True, "sent": True, "to": "the caller's email address on file",
                          "subject": "Paris weather"}
        [(mail_from, rcpt_tos, message)] = mailbox.messages
    assert mailbox.logins == [("assistant", "app-password")]
    assert (mail_from, rcpt_tos) == ("assistant@example.com", ["jordan@example.com"])
    assert message["X-From-Ai-Assistant"] == "true"
    assert (message["From"], message["To"], message["Subject"]) == ("assistant@example.com", "jordan@example.com",
                                                                    "Paris weather")
    assert not message.is_multipart() and message.get_content_type() == "text/html"
    assert message.get_content().strip() == "<p>Sunny, <b>18 °C</b>.</p>"


async def test_send_email_failures_are_error_outputs() -> None:
    """No recipient for the caller's group, or no server: the model is told, nothing raises."""
    ctx = ToolContext(call=PhoneCall(), smtp=smtp_settings(simulate.free_port()), email_to=None)
    args = json.dumps({"subject": "s", "body_html": "<p>b</p>"})
    assert await tools.run_tool("send_email", args, ctx, ALL) == {
        "ok": False, "sent": False, "error": "email is not configured for this caller"}
    ctx.email_to = "jordan@example.com"
    assert await tools.run_tool("send_email", args, ctx, ALL) == {
        "ok": False, "error": "the email could not be sent (ConnectionRefusedError)"}
