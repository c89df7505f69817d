"""realtime_ws: the proxy the environment names for the Realtime websocket."""

from __future__ import annotations

import pytest

from model.websocket import env_proxy

PROXY_VARS = ("HTTPS_PROXY", "HTTP_PROXY", "WSS_PROXY", "WS_PROXY", "NO_PROXY", "ALL_PROXY")


@pytest.mark.parametrize(
    ("env", "url", "proxy"),
    [
        pytest.param({}, "wss://api.openai.com/v1/realtime", None, id="none-set"),
        pytest.param({"HTTPS_PROXY": "http://proxy:3128"}, "wss://api.openai.com/v1/realtime", "http://proxy:3128",
                     id="https-for-wss"),
        pytest.param({"https_proxy": "http://proxy:3128"}, "wss://api.openai.com/v1/realtime", "http://proxy:3128",
                     id="lower-case"),
        pytest.param({"HTTPS_PROXY": "http://a:1", "WSS_PROXY": "http://b:2"}, "wss://api.openai.com/x", "http://b:2",
                     id="wss-wins"),
        pytest.param({"HTTP_PROXY": "http://proxy:3128"}, "wss://api.openai.com/v1/realtime", None,
                     id="http-not-for-wss"),
        pytest.param({"HTTP_PROXY": "http://proxy:3128"}, "ws://10.0.0.5:8765/v1/realtime", "http://proxy:3128",
                     id="http-for-ws"),
        pytest.param({"HTTPS_PROXY": "http://proxy:3128", "NO_PROXY": "localhost,.openai.com"},
                     "wss://api.openai.com/v1/realtime", None, id="no-proxy-domain"),
        pytest.param({"HTTP_PROXY": "http://proxy:3128", "NO_PROXY": "127.0.0.1"}, "ws://127.0.0.1:8765/v1/realtime",
                     None, id="no-proxy-loopback"),
    ],
)
def test_env_proxy(monkeypatch: pytest.MonkeyPatch, env: dict[str, str], url: str, proxy: str | None) -> None:
    for name in PROXY_VARS:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert env_proxy(url) == proxy
