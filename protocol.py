"""Sans-I/O core: Twilio Media Streams and OpenAI Realtime messages, and playback accounting.

Nothing here touches a socket or a clock: callers pass ``now`` (monotonic seconds) in, and
get strings and dicts out. The wire names of both protocols are written here once.

Sources: Twilio Media Streams "WebSocket Messages" docs; the ``openai`` package's
``openai.types.realtime`` event models (GA interface).
"""

from __future__ import annotations

import json
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Any

from audio import BYTES_PER_MS, SAMPLE_RATE_HZ

# --- Twilio Media Streams -------------------------------------------------------------


def twilio_media(stream_sid: str, payload: str) -> str:
    """Outbound ``media`` message.

    Args:
        stream_sid: the ``streamSid`` from Twilio's ``start``.
        payload: base64 µ-law 8 kHz audio, any length, no file header (Twilio docs:
            "The audio can be of any size").
    """
    return json.dumps({"event": "media", "streamSid": stream_sid, "media": {"payload": payload}})


def twilio_mark(stream_sid: str, name: str) -> str:
    """Outbound ``mark``: Twilio echoes it when the audio sent before it has played, at once
    if nothing is buffered, or immediately on ``clear`` (then it means discarded)."""
    return json.dumps({"event": "mark", "streamSid": stream_sid, "mark": {"name": name}})


def twilio_clear(stream_sid: str) -> str:
    """Outbound ``clear``: drops all audio buffered at Twilio and echoes every pending mark."""
    return json.dumps({"event": "clear", "streamSid": stream_sid})


def b64_decoded_len(payload: str) -> int:
    """Bytes encoded by a padded base64 string, without decoding it (µ-law: 8 bytes per ms)."""
    return len(payload) * 3 // 4 - payload[-2:].count("=")


# --- OpenAI Realtime (GA) client events ------------------------------------------------


def input_audio_append(payload: str) -> str:
    """``input_audio_buffer.append`` carrying a Twilio ``media.payload`` unchanged (µ-law)."""
    return json.dumps({"type": "input_audio_buffer.append", "audio": payload})


def session_update(session: dict[str, Any]) -> dict[str, Any]:
    """``session.update``; ``session`` must carry ``"type": "realtime"`` (GA requires it)."""
    if session.get("type") != "realtime":
        raise ValueError("session.update needs session.type 'realtime'")
    return {"type": "session.update", "session": session}


def realtime_session(
    *,
    instructions: str,
    voice: str,
    turn_detection: dict[str, Any] | None,
    noise_reduction: str | None,
    transcription_model: str | None = None,
    tools: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The telephony session: µ-law (``audio/pcmu``) in and out, audio output only.

    Args:
        instructions: the system prompt.
        voice: ``audio.output.voice`` (e.g. ``cedar``); fixed once the model has spoken.
        turn_detection: ``server_vad`` or ``semantic_vad`` object, or None for no VAD.
        noise_reduction: ``near_field``, ``far_field``, or None for off.
        transcription_model: caller transcription model, or None for none.
        tools: function tool definitions (``{"type": "function", "name", ...}``).
    """
    audio_input: dict[str, Any] = {
        "format": {"type": "audio/pcmu"},
        "turn_detection": turn_detection,
        "noise_reduction": {"type": noise_reduction} if noise_reduction else None,
    }
    if transcription_model:
        audio_input["transcription"] = {"model": transcription_model}
    session: dict[str, Any] = {
        "type": "realtime",
        "output_modalities": ["audio"],
        "instructions": instructions,
        "audio": {
            "input": audio_input,
            "output": {"format": {"type": "audio/pcmu"}, "voice": voice},
        },
    }
    if tools:
        session["tools"] = tools
        session["tool_choice"] = "auto"
    return session


def noise_reduction_update(mode: str | None, event_id: str) -> dict[str, Any]:
    """Partial ``session.update`` changing only ``audio.input.noise_reduction``.

    GA rejects a ``session.update`` without ``session.type`` (the earlier systems' defect: the
    switch failed while the tool reported success), so it is always sent. ``event_id`` comes
    back in ``error.event_id`` if the service refuses the update.

    Args:
        mode: ``near_field``, ``far_field``, or None for off.
        event_id: the client event id to correlate a refusal.
    """
    return {
        "type": "session.update",
        "event_id": event_id,
        "session": {
            "type": "realtime",
            "audio": {"input": {"noise_reduction": {"type": mode} if mode else None}},
        },
    }


def function_calls(response: dict[str, Any]) -> list[dict[str, Any]]:
    """Every ``function_call`` item of a ``response.done``'s ``response``, in output order.

    Only a ``completed`` response's calls are returned: the calls of a cancelled, failed or
    incomplete response are not to be run (the model was cut off before it finished).
    """
    if response.get("status") != "completed":
        return []
    output = response.get("output") or ()
    return [item for item in output if isinstance(item, dict) and item.get("type") == "function_call"]


def spoke(response: dict[str, Any]) -> bool:
    """True when a ``response.done``'s ``response`` holds an assistant audio message."""
    for item in response.get("output") or ():
        if isinstance(item, dict) and item.get("type") == "message":
            if any(isinstance(part, dict) and part.get("type") == "output_audio" for part in item.get("content") or ()):
                return True
    return False


def response_create(instructions: str | None = None) -> dict[str, Any]:
    """``response.create``, optionally with per-response instructions."""
    if instructions is None:
        return {"type": "response.create"}
    return {"type": "response.create", "response": {"instructions": instructions}}


def response_cancel() -> dict[str, Any]:
    """``response.cancel``; answered by ``response_cancel_not_active`` when none is active."""
    return {"type": "response.cancel"}


def item_truncate(item_id: str, audio_end_ms: int) -> dict[str, Any]:
    """``conversation.item.truncate`` of an assistant audio item at ``audio_end_ms``.

    The service rejects a position past the audio it generated ("Audio content of X ms is
    already shorter than Y ms"), so callers clamp first (see ``Playback.barge_in``).
    """
    return {
        "type": "conversation.item.truncate",
        "item_id": item_id,
        "content_index": 0,
        "audio_end_ms": audio_end_ms,
    }


def system_message(text: str) -> dict[str, Any]:
    """``conversation.item.create`` of a system message (system items take input_text only)."""
    return {
        "type": "conversation.item.create",
        "item": {"type": "message", "role": "system", "content": [{"type": "input_text", "text": text}]},
    }


def function_call_output(call_id: str, output: str) -> dict[str, Any]:
    """``conversation.item.create`` answering the function call ``call_id`` with ``output``
    (a JSON string)."""
    return {
        "type": "conversation.item.create",
        "item": {"type": "function_call_output", "call_id": call_id, "output": output},
    }


# --- Playback accounting ----------------------------------------------------------------


@dataclass(slots=True)
class _ItemAudio:
    start: int
    """Offset of the item's first byte in the outbound stream (bytes since the call began)."""
    sent: int = 0
    """µ-law bytes of this item sent to the phone."""
    closed: bool = False
    """The model finished this item's audio (``response.output_audio.done``)."""


@dataclass(frozen=True, slots=True)
class Truncation:
    """Where to cut one assistant item after a barge-in."""

    item_id: str
    audio_end_ms: int
    """Milliseconds of the item the caller heard, clamped to the audio sent for it."""


class Playback:
    """What the phone has played of the assistant's audio, per item.

    The outbound audio is one stream of µ-law bytes; every byte has an offset (bytes since
    the call began). After each media message the relay sends a mark named
    ``"<generation>.<end offset>"``. An echo of a mark of the current generation means the
    phone has played up to that offset at the echo's arrival; between echoes the play
    position advances with the wall clock at 8 bytes per ms (playback is real time),
    anchored at the last echo or at the moment audio was sent into an empty queue, and
    never past what was sent. ``clear`` starts a new generation, so the echoes Twilio sends
    for the cleared marks (Twilio docs: marks are echoed on clear) never count as played.

    Each item records the offset of its first byte, so later responses are measured from
    their own start, never from the first response's.
    """

    MAX_ITEMS = 16
    """Items remembered; older ones are long played out."""

    def __init__(self) -> None:
        self.generation = 0
        self.sent_total = 0
        """Offset one past the last byte sent to the phone."""
        self._anchor_offset = 0
        self._anchor_time = 0.0
        self._pending_marks: deque[int] = deque()
        """End offsets of this generation's marks not yet echoed, oldest first."""
        self._items: OrderedDict[str, _ItemAudio] = OrderedDict()

    def played(self, now: float) -> int:
        """Estimated stream offset the phone has played up to at ``now`` (bytes)."""
        elapsed = round((now - self._anchor_time) * SAMPLE_RATE_HZ)
        return min(self.sent_total, self._anchor_offset + max(elapsed, 0))

    def is_playing(self, now: float) -> bool:
        """True while assistant audio is queued at the phone (an echo is still due, or the
        clock estimate has not reached the end of what was sent)."""
        return bool(self._pending_marks) or self.played(now) < self.sent_total

    @property
    def marks_pending(self) -> bool:
        """True until the phone has echoed every mark of the current generation (everything
        sent has been played, or was cleared)."""
        return bool(self._pending_marks)

    def unplayed_ms(self, now: float) -> int:
        """Estimated milliseconds of sent audio the phone has not played yet at ``now``."""
        return (self.sent_total - self.played(now)) // BYTES_PER_MS

    def on_audio_sent(self, item_id: str, nbytes: int, now: float) -> str:
        """Account ``nbytes`` µ-law bytes of ``item_id`` just sent to the phone.

        Returns:
            The name of the mark to send right after that media message.
        """
        if not self._pending_marks and self.played(now) >= self.sent_total:
            # The queue had run dry: this audio starts playing now.
            self._anchor_offset, self._anchor_time = self.sent_total, now
        item = self._items.get(item_id)
        if item is None:
            item = self._items[item_id] = _ItemAudio(start=self.sent_total)
            while len(self._items) > self.MAX_ITEMS:
                self._items.popitem(last=False)
        item.sent += nbytes
        self.sent_total += nbytes
        self._pending_marks.append(self.sent_total)
        return f"{self.generation}.{self.sent_total}"

    def on_mark(self, name: str, now: float) -> bool:
        """Account a mark echo from the phone.

        Returns:
            True when it proves playback up to its offset; False for an echo of a cleared
            generation or a name this relay did not make (ignored).
        """
        generation, _, offset_text = name.partition(".")
        if generation != str(self.generation) or not offset_text.isdigit():
            return False
        offset = int(offset_text)
        if offset not in self._pending_marks:
            return False
        while self._pending_marks and self._pending_marks[0] <= offset:  # echoes come in order
            self._pending_marks.popleft()
        self._anchor_offset, self._anchor_time = offset, now
        return True

    def close_item(self, item_id: str) -> None:
        """The model will send no more audio for ``item_id`` (``response.output_audio.done``)."""
        item = self._items.get(item_id)
        if item is not None:
            item.closed = True

    def heard_ms(self, item_id: str, now: float) -> int:
        """Milliseconds of ``item_id`` played by ``now`` (0 for an unknown item)."""
        item = self._items.get(item_id)
        if item is None:
            return 0
        return min(max(self.played(now) - item.start, 0), item.sent) // BYTES_PER_MS

    def barge_in(self, now: float) -> list[Truncation]:
        """The phone's queue is being cleared at ``now``: close the generation.

        Returns:
            One truncation per item with audio not yet played or still being generated: the
            item being heard at its heard position, items queued behind it at 0 ms. Items
            fully played and closed need none.
        """
        played = self.played(now)
        cuts = [
            Truncation(item_id, min(max(played - item.start, 0), item.sent) // BYTES_PER_MS)
            for item_id, item in self._items.items()
            if item.start + item.sent > played or not item.closed
        ]
        self.generation += 1
        self._pending_marks.clear()
        self._anchor_offset, self._anchor_time = self.sent_total, now
        self._items.clear()
        return cuts
