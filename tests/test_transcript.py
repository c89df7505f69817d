"""The conversation as text (``transcript.Transcript``): order, barge-in cuts, bounds of the replay."""

from __future__ import annotations

from bridge.transcript import MAX_TURN_CHARS, MAX_TURNS, Transcript


def test_turns_keep_conversation_order_though_transcripts_come_late() -> None:
    """A caller turn takes its place at its commit; its transcript, arriving after the answer, fills it in."""
    t = Transcript()
    t.caller_committed("u1")
    t.assistant_delta("a1", "Paris began ")
    t.assistant_delta("a1", "as a village.")
    t.caller_said("u1", " Tell me about Paris. ")
    assert t.assistant_done("a1", "Paris began as a village.").text == "Paris began as a village."
    assert [(turn.role, turn.text) for turn in t.replay()] == [("user", "Tell me about Paris."),
                                                                ("assistant", "Paris began as a village.")]


def test_a_cut_keeps_the_share_heard_and_later_text_does_not_undo_it() -> None:
    """Heard 500 of 1000 ms sent: half the words received so far, ending in …; the done that follows keeps it."""
    t = Transcript()
    t.assistant_delta("a1", "one two three four five six")
    turn = t.cut("a1", heard_ms=500, sent_ms=1000)
    assert (turn.text, turn.unheard, turn.cut, turn.final) == ("one two three…", "four five six", True, True)
    t.assistant_delta("a1", " seven")
    done = t.assistant_done("a1", "one two three four five six seven eight")
    assert (done.text, done.unheard) == ("one two three…", "four five six seven eight")
    assert t.replay()[0].text == "one two three…"


def test_a_cut_before_any_text_applies_its_share_to_the_text_when_it_comes() -> None:
    t = Transcript()
    t.cut("a1", heard_ms=250, sent_ms=1000)
    done = t.assistant_done("a1", "one two three four")
    assert (done.text, done.unheard) == ("one…", "two three four")
    assert t.replay()[0].text == "one…"


def test_a_turn_cut_before_a_word_was_heard_is_not_replayed() -> None:
    t = Transcript()
    t.assistant_delta("a1", "one two three")
    assert t.cut("a1", heard_ms=0, sent_ms=800).text == ""
    assert t.cut("a2", heard_ms=0, sent_ms=0).text == ""  # queued behind, never played
    assert t.replay() == []


def test_the_replay_takes_the_newest_turns_within_its_bounds() -> None:
    t = Transcript()
    for i in range(10):
        t.caller_said(f"u{i}", f"turn {i} " + "x" * 90)  # about 100 characters each
    assert [turn.item_id for turn in t.replay(max_turns=3)] == ["u7", "u8", "u9"]
    assert [turn.item_id for turn in t.replay(max_chars=350)] == ["u7", "u8", "u9"]


def test_memory_is_bounded() -> None:
    """A peer's endless transcript or endless turns cannot grow a call's memory."""
    t = Transcript()
    for i in range(MAX_TURNS + 50):
        t.caller_said(f"u{i}", "hello")
    assert len(t) == MAX_TURNS and t.turns()[0].item_id == "u50"
    for _ in range(MAX_TURN_CHARS):
        t.assistant_delta("a", "word ")
    assert len(t.turns()[-1].text) <= MAX_TURN_CHARS + len("word ")
    assert len(t.caller_said("u", "y" * (MAX_TURN_CHARS * 2)).text) == MAX_TURN_CHARS
