"""Property: however a run's output arrives in chunks, what is kept, the events and the offsets agree."""

from __future__ import annotations

from types import SimpleNamespace

from hypothesis import given, settings
from hypothesis import strategies as st

from engine.ports import Chunk, SystemClock
from engine.runs import _Supervision
from engine.settings import Settings
from runtimes import harness

CAP = 64

chunks = st.lists(
    st.tuples(st.sampled_from(["stdout", "stderr"]),
              st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=30)),
    max_size=40,
)


def supervision(provider: str) -> _Supervision:
    svc = SimpleNamespace(settings=Settings(output_cap_bytes=CAP), clock=SystemClock())
    sup = _Supervision(svc, "run_x")  # type: ignore[arg-type]
    sup.harness = harness.get(provider)
    sup.output, sup.stderr = "", ""
    sup.offsets = {"stdout": 0, "stderr": 0}
    sup.truncated = {"stdout": False, "stderr": False}
    sup.kept = {"stdout": 0, "stderr": 0}
    return sup


def feed(sup: _Supervision, parts: list[tuple[str, str]]) -> dict[str, bytes]:
    sent = {"stdout": b"", "stderr": b""}
    for stream, text in parts:
        data = text.encode()
        # split each chunk at an arbitrary byte, even inside a multi-byte character
        for piece in (data[: len(data) // 2], data[len(data) // 2:]):
            if piece:
                sup._take(Chunk(stream=stream, data=piece))  # type: ignore[arg-type]
        sent[stream] += data
    return sent


@settings(max_examples=300, deadline=None, derandomize=True)
@given(chunks)
def test_kept_text_events_and_offsets_agree_for_plain_output(parts):
    sup = supervision("custom")
    sent = feed(sup, parts)
    for stream, kept, event_type, flag in (("stdout", sup.output, "output", "stdout"),
                                           ("stderr", sup.stderr, "stderr", "stderr")):
        assert sup.offsets[stream] == len(sent[stream])
        whole = sent[stream].decode()
        assert whole.startswith(kept)
        assert len(kept.encode()) <= CAP
        assert sup.truncated[flag] == (len(sent[stream]) > CAP)
        if len(sent[stream]) <= CAP:
            assert kept == whole and not sup.truncated[flag]
        texts = "".join(p["text"] for t, _, p in sup.pending if t == event_type and "text" in p)
        assert texts == kept
    # coalescing: two text events of the same stream are never next to each other
    for (t1, _, p1), (t2, _, p2) in zip(sup.pending, sup.pending[1:], strict=False):
        assert not (t1 == t2 and "text" in p1 and "text" in p2), sup.pending
    assert all(p["text"] for _, _, p in sup.pending if "text" in p)


@settings(max_examples=200, deadline=None, derandomize=True)
@given(st.lists(st.text(alphabet="abc {}\"", max_size=20), max_size=20))
def test_structured_output_advances_offsets_only_past_complete_lines(lines):
    sup = supervision("codex")
    data = "\n".join(lines).encode()
    for i in range(0, len(data), 7):
        sup._take(Chunk(stream="stdout", data=data[i:i + 7]))
    assert sup.offsets["stdout"] + len(sup.line_buf) == len(data)
    assert b"\n" not in sup.line_buf
    assert sup.offsets["stdout"] == (data.rfind(b"\n") + 1)
