"""The app's state: one typed ``web.AppKey`` per piece, set once by ``relay.make_app`` and its cleanup contexts."""

from __future__ import annotations

import asyncio

import openai
from aiohttp import web

from bridge.call import Call
from bridge.events import Stats
from bridge.prewarm import Prewarms
from config import Config
from model.prices import PriceTable
from model.session import SessionFactory
from model.websocket import RealtimeClient
from ops.budget import DailyBudget
from ops.capacity import Capacity
from ops.console import Console
from ops.metrics import Metrics
from ops.tokens import StreamTokens
from phones.dialer import Dialer
from phones.network import Signatures
from phones.sms import SmsReplies
from store.records import Records

CONFIG = web.AppKey("config", Config)
STATS = web.AppKey("stats", Stats)
CALLS = web.AppKey("calls", dict[Call, asyncio.Task[web.StreamResponse]])
"""Live calls and the request handler task holding each."""
CAPACITY = web.AppKey("capacity", Capacity)
METRICS = web.AppKey("metrics", Metrics | None)
"""None unless ``METRICS=true``."""
CONSOLE = web.AppKey("console", Console | None)
"""None unless ``CONSOLE_TOKEN`` is set."""
CONSOLE_HTML = web.AppKey("console_html", str)
SIGNATURES = web.AppKey("signatures", dict[str, Signatures])
"""Each network's signature checks, by network name."""
DRAINING = web.AppKey("draining", asyncio.Event)
WAIT_MUSIC = web.AppKey("wait_music", tuple[str, ...])
"""The waiting music as base64 µ-law 20 ms frames (empty: none)."""
OPENAI_CLIENT = web.AppKey("openai_client", openai.AsyncOpenAI | None)
"""One REST client (and connection pool) for every call's web searches and every SMS reply."""
REALTIME_CLIENT = web.AppKey("realtime_client", RealtimeClient)
"""One connection pool for every call's model websocket."""
SESSIONS = web.AppKey("sessions", SessionFactory)
PREWARMS = web.AppKey("prewarms", Prewarms)
"""Model sessions opened at the voice webhook, taken over by their streams (``bridge.prewarm``)."""
"""Makes every call's model sessions over ``REALTIME_CLIENT`` (``model.factory``), built once."""
SMS = web.AppKey("sms", SmsReplies)
PRICES = web.AppKey("prices", PriceTable)
"""What each model costs (``assets/prices.json`` or ``PRICES_FILE``), read once at startup."""
DIALER = web.AppKey("dialer", Dialer)
"""Places outbound calls and puts callers through (``routes.outbound``)."""
STREAM_TOKENS = web.AppKey("stream_tokens", StreamTokens)
"""Issued by the voice webhooks, checked (once) by the media streams."""
RECORDS = web.AppKey("records", Records | None)
"""The call records (``store.records``); None with ``RECORDS=off`` or a database that could not be used."""
BUDGET = web.AppKey("budget", DailyBudget | None)
"""``DAILY_BUDGET_USD``; None without one."""
