"""Property: however a run's output arrives in chunks, what is kept, the events and the offsets agree
(engine.output.OutputFolder, a pure class: no store, no clock)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from engine.runs.output import OutputFolder
from engine.ports import Chunk
from runtimes import harness

CAP = 64

chunks = st.lists(
    st.tuples(st.sampled_from(["stdout", "stderr"]),
              st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"], exclude_characters="\x00"),
                      max_size=30)),
    max_size=40,
)


def feed(folder: OutputFolder, parts: list[tuple[str, str]], drain_every: int) -> tuple[dict[str, bytes], list, dict]:
    """Feed the parts, draining every few chunks as the supervisor's flushes would; returns what was
    sent, every event drained, and the kept text per stream as the store would hold it."""
    sent = {"stdout": b"", "stderr": b""}
    events: list = []
    kept = {"stdout": "", "stderr": ""}

    def drain() -> None:
        folded = folder.drain()
        events.extend(folded.events)
        for stream, text in folded.kept.items():
            kept[stream] += text

    for i, (stream, text) in enumerate(parts):
        data = text.encode()
        # split each chunk at an arbitrary byte, even inside a multi-byte character
        for piece in (data[: len(data) // 2], data[len(data) // 2:]):
            if piece:
                folder.take(Chunk(stream=stream, data=piece))  # type: ignore[arg-type]
        sent[stream] += data
        if drain_every and i % drain_every == 0:
            drain()
    folder.end()
    drain()
    return sent, events, kept


@settings(max_examples=300, deadline=None, derandomize=True)
@given(chunks, st.integers(min_value=0, max_value=5))
def test_kept_text_events_and_offsets_agree_for_plain_output(parts, drain_every):
    folder = OutputFolder(harness.get("custom"), CAP)
    sent, events, kept = feed(folder, parts, drain_every)
    for stream, event_type in (("stdout", "output"), ("stderr", "stderr")):
        assert folder.offsets[stream] == len(sent[stream])
        whole = sent[stream].decode()
        assert whole.startswith(kept[stream])
        assert len(kept[stream].encode()) <= CAP
        assert folder.truncated[stream] == (len(sent[stream]) > CAP)
        if len(sent[stream]) <= CAP:
            assert kept[stream] == whole
        texts = "".join(p["text"] for t, _, p in events if t == event_type and "text" in p)
        assert texts == kept[stream]
    assert all(p["text"] for _, _, p in events if "text" in p)


@settings(max_examples=100, deadline=None, derandomize=True)
@given(chunks)
def test_between_two_drains_text_of_one_stream_is_coalesced_into_one_event_at_a_time(parts):
    folder = OutputFolder(harness.get("custom"), 10_000)
    for stream, text in parts:
        if text:
            folder.take(Chunk(stream=stream, data=text.encode()))  # type: ignore[arg-type]
    pending = folder.drain().events
    for (t1, _, p1), (t2, _, p2) in zip(pending, pending[1:], strict=False):
        assert not (t1 == t2 and "text" in p1 and "text" in p2), pending


@settings(max_examples=200, deadline=None, derandomize=True)
@given(st.lists(st.text(alphabet="abc {}\"", max_size=20), max_size=20))
def test_structured_output_advances_offsets_only_past_complete_lines(lines):
    folder = OutputFolder(harness.get("codex"), CAP)
    data = "\n".join(lines).encode()
    for i in range(0, len(data), 7):
        folder.take(Chunk(stream="stdout", data=data[i:i + 7]))
    assert folder.offsets["stdout"] == (data.rfind(b"\n") + 1)
    folder.end()
    assert folder.offsets["stdout"] == len(data)


def test_a_nul_byte_is_kept_as_the_replacement_character_on_every_path():
    """PostgreSQL's text cannot hold NUL: a run printing one is kept the same way on both stores."""
    plain = OutputFolder(harness.get("custom"), CAP)
    plain.take(Chunk(stream="stdout", data=b"a\x00b\n"))
    plain.take(Chunk(stream="stderr", data=b"\x00"))
    folded = plain.drain()
    assert folded.kept == {"stdout": "a\ufffdb\n", "stderr": "\ufffd"}
    assert all("\x00" not in p["text"] for _, _, p in folded.events if "text" in p)
    structured = OutputFolder(harness.get("codex"), CAP)
    structured.take(Chunk(stream="stdout", data=b"not json \x00 here\n"))
    structured.end()
    assert "\x00" not in repr(structured.drain())
