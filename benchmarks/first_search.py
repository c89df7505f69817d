"""CPU the first real web search costs after the startup warm-up, against a warm-up without citations.

Run: python benchmarks/first_search.py

The openai SDK builds the parser of each part of a response the first time it sees that part; the
event loop (every live call's audio) waits meanwhile. ``tools.warm_up_web_search`` pays that at
startup with a sample answer. Each figure comes from a fresh process: warm up (with the relay's
sample, or with the same sample stripped of its citation, search action query and location, as it
was before), then time a first and a second search whose answer has a ``url_citation`` (an
in-memory transport: CPU only, no network).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CHILD = r"""
import asyncio, copy, json, sys, time
sys.path.insert(0, sys.argv[1])
import httpx2, openai, tools

ANSWER = {"id": "resp_1", "object": "response", "created_at": 0, "status": "completed", "model": "gpt-5.2",
          "instructions": "x", "output": [
              {"type": "web_search_call", "id": "ws_1", "status": "completed",
               "action": {"type": "search", "query": "q"}},
              {"type": "message", "id": "msg_1", "status": "completed", "role": "assistant",
               "content": [{"type": "output_text", "text": "Sunny, says Meteo-France.", "annotations": [
                   {"type": "url_citation", "url": "https://meteofrance.com/paris", "title": "Meteo-France",
                    "start_index": 0, "end_index": 5}]}]}],
          "parallel_tool_calls": True, "tool_choice": "required",
          "tools": [{"type": "web_search", "user_location": {"type": "approximate", "city": "Paris"}}],
          "error": None, "incomplete_details": None, "metadata": {}, "temperature": 1.0, "top_p": 1.0}

async def search():
    transport = httpx2.MockTransport(lambda request: httpx2.Response(200, json=ANSWER))
    client = openai.AsyncOpenAI(api_key="x", base_url="http://bench.invalid/v1",
                                http_client=openai.DefaultAsyncHttpxClient(transport=transport))
    async with client:
        start = time.perf_counter()
        response = await client.responses.create(
            model="gpt-5.2", input="weather in Paris", instructions=tools.SPEECH_INSTRUCTIONS,
            tools=[{"type": "web_search", "user_location": {"type": "approximate", "city": "Paris"}}],
            tool_choice="required", max_output_tokens=600)
        tools.for_speech(response.output_text)
        tools.source_label(response)
        return (time.perf_counter() - start) * 1000

async def main(old):
    if old:  # the sample as it was: no citation, no query, no location, no instructions
        sample = copy.deepcopy(tools._SAMPLE_RESPONSE)
        sample["output"][0]["action"] = {"type": "search"}
        sample["output"][1]["content"][0]["annotations"] = []
        sample["tools"] = [{"type": "web_search"}]
        for key in ("instructions", "error", "incomplete_details", "metadata", "temperature", "top_p"):
            sample.pop(key)
        tools._SAMPLE_RESPONSE = sample
    await tools.warm_up_web_search("gpt-5.2")
    print(json.dumps([await search(), await search()]))

asyncio.run(main(sys.argv[2] == "old"))
"""


def measure(variant: str, runs: int = 3) -> tuple[float, float]:
    """Best first and second search times (ms) over ``runs`` fresh processes."""
    firsts, seconds = [], []
    for _ in range(runs):
        out = subprocess.run([sys.executable, "-c", CHILD, str(ROOT), variant], capture_output=True, text=True,
                             check=True).stdout
        first, second = json.loads(out.strip().splitlines()[-1])
        firsts.append(first)
        seconds.append(second)
    return min(firsts), min(seconds)


def main() -> None:
    print(f"{'warm-up sample':<34}{'first search ms':>17}{'second ms':>11}")
    for label, variant in (("without citation (before)", "old"), ("shaped like a real answer (relay)", "new")):
        first, second = measure(variant)
        print(f"{label:<34}{first:>17.1f}{second:>11.1f}")
    print("\nThe first search's extra time is a stall of every live call's audio in the process.")


if __name__ == "__main__":
    main()
