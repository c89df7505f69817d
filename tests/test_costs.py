"""What a call costs: the usage the service reports, summed by kind, times the price table; on the call's last log
line, in its end event and in /metrics."""

from __future__ import annotations

import json
import re
from dataclasses import asdict
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from support import SECRET_KEY, relay_output, until

import simulate
from config import VoiceApi
from model.prices import PriceError, PriceTable, TokenUsage, usage_of
from simulate import CallResult, Scenario, load_scenario

ROOT = Path(__file__).resolve().parent.parent


def test_usage_takes_the_cached_share_out_of_each_kind() -> None:
    """Cached tokens are a share of the input tokens (openai.types.realtime.RealtimeResponseUsageInputTokenDetails):
    each kind is counted once, at its own price."""
    raw = {"input_tokens": 1100, "output_tokens": 260, "total_tokens": 1360,
           "input_token_details": {"text_tokens": 300, "audio_tokens": 800, "cached_tokens": 700,
                                   "cached_tokens_details": {"text_tokens": 200, "audio_tokens": 500}},
           "output_token_details": {"text_tokens": 60, "audio_tokens": 200}}
    assert usage_of(raw) == TokenUsage(text_input=100, cached_text_input=200, audio_input=300, cached_audio_input=500,
                                       text_output=60, audio_output=200)
    assert usage_of(None) is None and usage_of({"input_token_details": "x", "output_token_details": {
        "audio_tokens": -5}}) == TokenUsage()


def test_the_price_table_prices_tokens_by_kind_and_live_by_the_minute() -> None:
    table = PriceTable.load()
    usage = TokenUsage(text_input=1_000_000, cached_text_input=1_000_000, audio_input=1_000_000,
                       cached_audio_input=1_000_000, text_output=1_000_000, audio_output=1_000_000)
    assert table.cost("gpt-realtime-2.1", usage, 0.0) == pytest.approx(4 + 0.4 + 32 + 0.4 + 24 + 64)
    assert table.cost("gpt-live-1.1", TokenUsage(), 90.0) == pytest.approx(0.075)
    assert table.cost("some-model", usage, 60.0) is None
    assert table.date == "2026-12-06"


def test_a_price_table_that_cannot_be_used_stops_startup(tmp_path: Path) -> None:
    bad = tmp_path / "prices.json"
    bad.write_text(json.dumps({"models": {"gpt-realtime-2.1": {"per_million_tokens": "cheap"}}}))
    with pytest.raises(PriceError, match="not a price table"):
        PriceTable.load(bad)
    with pytest.raises(PriceError, match="cannot be read"):
        PriceTable.load(tmp_path / "missing.json")


async def test_the_relay_refuses_a_bad_prices_file(tmp_path: Path) -> None:
    (tmp_path / "prices.json").write_text("[]")
    code, output = await relay_output({"OPENAI_API_KEY": SECRET_KEY, "PRICES_FILE": str(tmp_path / "prices.json"),
                                       "PATH": "/usr/bin:/bin"})
    assert code == 1 and "configuration error: PRICES_FILE:" in output and "not a price table" in output


async def metric(relay_url: str, token: str, name: str) -> float:
    headers = {"Authorization": aiohttp.encode_basic_auth("ops", token)}
    async with aiohttp.ClientSession() as http, http.get(relay_url + "/metrics", headers=headers) as resp:
        text = await resp.text()
    found = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
    assert found is not None, name
    return float(found.group(1))


@pytest.mark.parametrize("voice_api", [VoiceApi.REALTIME, VoiceApi.LIVE])
async def test_a_calls_cost_is_the_reported_usage_times_the_price_table(voice_api: VoiceApi, tmp_path: Path,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    """Realtime: every response.done's usage (as the stand-in reports it), by kind, times the price of
    OPENAI_REALTIME_MODEL. GPT-Live: the billed seconds times its price a minute. The same figure on the call's
    last log line, in /metrics and in the call's record, which holds the usage (GPT-Live: its seconds)."""
    scenario: Scenario = load_scenario(ROOT / "scenarios" / "outbound_human.json")
    scenario.caller[0].when = {"after": "assistant_done", "delay_ms": 400}  # dialled in: answer the greeting
    token = "a-console-token-of-some-length"
    seen: dict[str, float] = {}

    record: dict[str, Any] = {}

    async def after_call(result: CallResult, relay_url: str) -> None:
        seen["total"] = await metric(relay_url, token, "relay_cost_usd_total")
        seen["count"] = await metric(relay_url, token, "relay_call_cost_usd_count")
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as http:
            async def ended() -> bool:
                async with http.get(relay_url + "/api/calls") as resp:
                    calls = (await resp.json())["calls"]
                if not calls or not calls[0]["ended_at"]:
                    return False
                async with http.get(relay_url + f"/api/calls/{calls[0]['call_sid']}") as resp:
                    record.update(await resp.json())
                return True
            await until(ended, what="the call's record")

    result = await simulate.simulate_call(scenario, seed=2, after_call=after_call, voice_api=voice_api, metrics=True,
                                          console_token=token, database_url=f"sqlite:///{tmp_path / 'relay.db'}")
    assert result.ok, result.problems
    assert result.standin is not None
    table = PriceTable.load()
    if voice_api is VoiceApi.REALTIME:
        [session] = result.standin.sessions
        reported: list[dict[str, Any]] = [event["response"]["usage"] for event in session.sent
                                          if event["type"] == "response.done" and "usage" in event["response"]]
        assert len(reported) == 3 and all(usage["output_token_details"]["audio_tokens"] > 0 for usage in reported[:1])
        total = TokenUsage()
        for usage in reported:
            found = usage_of(usage)
            assert found is not None
            total.add(found)
        expected = table.cost("gpt-realtime-2.1", total, 0.0)
    else:
        [session] = result.standin.live_sessions
        billed = float(re.search(r"billed_s=(\S+)", caplog.text).group(1))  # type: ignore[union-attr]
        expected = table.cost("gpt-live-1.1", TokenUsage(), billed)
    assert expected is not None and expected > 0
    assert seen["count"] == 1 and seen["total"] == pytest.approx(expected, rel=1e-9, abs=1e-4)
    logged = float(re.search(r"cost_usd=(\S+)", caplog.text).group(1))  # type: ignore[union-attr]
    assert logged == pytest.approx(expected, abs=0.00005)
    assert record["cost_usd"] == pytest.approx(expected, rel=1e-9) and record["voice_api"] == str(voice_api)
    if voice_api is VoiceApi.REALTIME:
        assert record["usage"] == asdict(total)
    else:
        assert record["usage"]["seconds"] == pytest.approx(billed) and record["model"] == "gpt-live-1.1"
