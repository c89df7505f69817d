"""``python relay.py healthcheck``: one request to this relay's own ``/healthz``, for a container's health check."""

from __future__ import annotations

import ssl
import urllib.error
import urllib.request

from config import Config

PROBE_TIMEOUT_S = 2.0


def healthcheck(config: Config) -> int:
    """GET ``/healthz`` on the relay's own port over loopback, with TLS when it serves TLS itself
    (``TLS_CERT_FILE``; the certificate names the public host, not 127.0.0.1, so it is not verified on this
    loopback hop). Returns 0 when it answers 200, 1 otherwise (with one line saying why)."""
    scheme = "https" if config.tls_cert_file else "http"
    context = ssl._create_unverified_context() if config.tls_cert_file else None  # loopback only
    url = f"{scheme}://127.0.0.1:{config.port}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=PROBE_TIMEOUT_S, context=context) as response:
            if response.status == 200:
                return 0
            print(f"healthcheck: {url} answered {response.status}")
    except (OSError, urllib.error.URLError) as exc:
        print(f"healthcheck: {url}: {getattr(exc, 'reason', exc)}")
    return 1
