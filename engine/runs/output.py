"""Output folding: a run's raw stdout/stderr chunks in, coalesced events and kept text out.

A pure class (no I/O, no clock): the supervisor feeds it chunks, and drains what it has folded
each time it flushes. Kept text is capped in bytes per stream; once a stream is cut, nothing more
of it is kept. A structured runtime's stdout is parsed line by line into typed events and its
answer instead of being kept as text.
"""

from __future__ import annotations

import codecs
from dataclasses import dataclass, field
from typing import Any

from engine.ports import Chunk, Failure, Harness
from engine.secrets import Masker

Draft = tuple[str, str, dict[str, Any]]
NUL_SHOWN = "\ufffd"
"""What a NUL byte of a run's output is kept as: PostgreSQL's text cannot hold NUL (a run printing one
failed its flushes there), and no reader of the record wants one; the same on both stores."""
STDERR_TAIL_CHARS = 4096
"""How much of the end of stderr the runtime's adapter reads to classify a failure."""


@dataclass
class Folded:
    """What a flush writes: the events, the text newly kept per stream, a new answer, the resume
    offsets (bytes of the raw streams consumed) and the truncation flags."""

    events: list[Draft]
    kept: dict[str, str]
    answer: str | None
    offsets: dict[str, int]
    truncated: dict[str, bool]


@dataclass
class OutputFolder:
    harness: Harness
    cap: int
    """Bytes kept per stream."""
    offsets: dict[str, int] = field(default_factory=lambda: {"stdout": 0, "stderr": 0})
    kept_bytes: dict[str, int] = field(default_factory=lambda: {"stdout": 0, "stderr": 0})
    truncated: dict[str, bool] = field(default_factory=lambda: {"stdout": False, "stderr": False})
    pending: list[Draft] = field(default_factory=list)
    pending_bytes: int = 0
    """Raw bytes taken since the last drain: the supervisor flushes when this grows."""
    mask: Masker | None = None
    """The run's secret values, masked out of every kept text, event and answer before they are written."""
    failure: Failure | None = None
    """The last failure the runtime's stream reported (an authentication error, say)."""
    stderr_tail: str = ""
    """The end of stderr as it came (masked), for the adapter to classify a failure."""

    def __post_init__(self) -> None:
        self._decoders = {s: codecs.getincrementaldecoder("utf-8")("replace") for s in ("stdout", "stderr")}
        self._line = b""
        self._new: dict[str, list[str]] = {"stdout": [], "stderr": []}
        self._answer: str | None = None

    @classmethod
    def resuming(cls, harness: Harness, cap: int, *, offsets: dict[str, int], kept: dict[str, str],
                 truncated: dict[str, bool]) -> OutputFolder:
        """A folder that continues where a committed flush left off (after a restart)."""
        return cls(harness, cap, offsets=dict(offsets),
                   kept_bytes={s: len(t.encode()) for s, t in kept.items()}, truncated=dict(truncated))

    def take(self, chunk: Chunk) -> None:
        self.pending_bytes += len(chunk.data)
        if chunk.stream == "stdout" and self.harness.structured:
            self._line += chunk.data
            *lines, self._line = self._line.split(b"\n")
            for line in lines:
                self.offsets["stdout"] += len(line) + 1
                self._parse(line)
            return
        self.offsets[chunk.stream] += len(chunk.data)
        text = self._decoders[chunk.stream].decode(chunk.data).replace("\x00", NUL_SHOWN)
        if self.mask:
            text = self.mask.stream(chunk.stream, text)
        self._kept_text(chunk.stream, text)

    def _kept_text(self, stream: str, text: str) -> None:
        if stream == "stderr":
            self.stderr_tail = (self.stderr_tail + text)[-STDERR_TAIL_CHARS:]
        self._keep(stream, text)

    def end(self) -> None:
        """The stream is over: a last line without a newline still counts, and text held back by the
        masker (the possible start of a secret) is let go."""
        if self._line:
            self.offsets["stdout"] += len(self._line)
            self._parse(self._line)
            self._line = b""
        if self.mask:
            for stream in ("stdout", "stderr"):
                held = self.mask.flush(stream)
                if held:
                    self._kept_text(stream, held)

    def rewind_partial_line(self) -> None:
        """Following starts again from `offsets`: a structured stream's unfinished line will come again."""
        self._line = b""

    @property
    def has_pending(self) -> bool:
        return bool(self.pending) or any(self._new.values()) or self._answer is not None

    def drain(self) -> Folded:
        folded = Folded(events=self.pending, kept={s: "".join(t) for s, t in self._new.items()},
                        answer=self._answer, offsets=dict(self.offsets), truncated=dict(self.truncated))
        self.pending, self.pending_bytes, self._answer = [], 0, None
        self._new = {"stdout": [], "stderr": []}
        return folded

    def _parse(self, line: bytes) -> None:
        text = line.decode("utf-8", "replace").rstrip("\r").replace("\x00", NUL_SHOWN)
        if not text.strip():
            return
        mask = self.mask
        if mask:
            text = mask.line(text)
        parsed = self.harness.parse_line(text)
        for ev in parsed.events:
            if mask:  # a value the runtime decoded from an escape in the line
                self.pending.append((ev.type, mask.line(ev.message), mask.value(ev.payload)))  # type: ignore[arg-type]
            else:
                self.pending.append((ev.type, ev.message, ev.payload))
        if parsed.failure is not None:
            self.failure = parsed.failure
        if parsed.output is not None:
            data = (mask.line(parsed.output) if mask else parsed.output).encode()
            self._answer = data[: self.cap].decode("utf-8", "ignore")
            self.truncated["stdout"] = len(data) > self.cap

    def _keep(self, stream: str, text: str) -> None:
        """Keep text up to the cap (in bytes); once a stream is cut, keep nothing more of it."""
        if self.truncated[stream]:
            return
        event_type = "output" if stream == "stdout" else "stderr"
        data = text.encode()
        room = self.cap - self.kept_bytes[stream]
        cut = len(data) > room
        if cut:
            text = data[:room].decode("utf-8", "ignore")
            self.truncated[stream] = True
        self.kept_bytes[stream] += len(text.encode())
        self._new[stream].append(text)
        if text:
            last = self.pending[-1] if self.pending else None
            if last is not None and last[0] == event_type and "text" in last[2]:
                last[2]["text"] += text  # coalesce into the open event
            else:
                self.pending.append((event_type, "", {"text": text}))
        if cut:
            self.pending.append((event_type, f"{stream} cut at {self.cap} bytes", {"truncated": True}))
