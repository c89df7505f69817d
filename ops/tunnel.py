"""``NGROK_AUTHTOKEN``: a public https URL for a relay on a laptop, through the official ngrok SDK
(``pip install ngrok``; an optional dependency). ngrok Python SDK docs: ``ngrok.forward``."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable

OPEN_TIMEOUT_S = 20.0


class TunnelError(Exception):
    """The tunnel cannot be opened; the message says why and what to do (never the token)."""


async def open_tunnel(port: int, authtoken: str, domain: str | None) -> tuple[str, Callable[[], Awaitable[None]]]:
    """Forward ``https://<domain or an ngrok-assigned host>`` to ``localhost:port``.

    Returns:
        The public ``https://`` origin and a coroutine function that closes the tunnel.

    Raises:
        TunnelError: the ``ngrok`` package is missing, or the tunnel did not open within
            ``OPEN_TIMEOUT_S`` (bad token, no network, a domain not on the account).
    """
    try:
        import ngrok
    except ImportError:
        raise TunnelError("NGROK_AUTHTOKEN is set but the ngrok package is not installed: pip install ngrok") from None
    options: dict[str, str] = {"authtoken": authtoken}
    if domain:
        options["domain"] = domain
    try:
        opening = ngrok.forward(f"localhost:{port}", **options)
        listener = await asyncio.wait_for(opening, OPEN_TIMEOUT_S) if inspect.isawaitable(opening) else opening
        url = str(listener.url())
    except TimeoutError:
        raise TunnelError(f"the ngrok tunnel did not open within {OPEN_TIMEOUT_S:.0f}s") from None
    except Exception as exc:  # the SDK raises ValueError with the session's error text
        detail = " ".join(str(part) for part in getattr(exc, "args", ()))[:200]
        raise TunnelError(f"the ngrok tunnel could not open ({type(exc).__name__}: {detail})") from None

    async def close() -> None:
        try:
            closing = listener.close()
            if inspect.isawaitable(closing):
                await asyncio.wait_for(closing, 5.0)
        except Exception:  # closing a tunnel at exit: nothing left to do about a failure
            pass

    return url, close
