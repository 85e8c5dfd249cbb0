"""The wrapper's trailer on stderr, read off the end of a run's stream (runtimes.wrapper.Trailer)."""

from __future__ import annotations

from engine.ports import Chunk
from runtimes.wrapper import Trailer

REAL = b"\x1eagentdock-end 4 6 0\x1e"


def feed(pieces: list[tuple[str, bytes]]) -> tuple[dict[str, bytes], Trailer]:
    trailer, out = Trailer(), {"stdout": b"", "stderr": b""}
    for stream, data in pieces:
        for chunk in trailer.take(Chunk(stream=stream, data=data)):  # type: ignore[arg-type]
            out[chunk.stream] += chunk.data
    for chunk in trailer.end():
        out[chunk.stream] += chunk.data
    return out, trailer


def test_a_trailer_split_across_chunks_is_read_and_kept_out_of_the_output():
    out, trailer = feed([("stdout", b"out\n"), ("stderr", b"oops\n" + REAL[:3]), ("stderr", REAL[3:12]),
                         ("stderr", REAL[12:])])
    assert out == {"stdout": b"out\n", "stderr": b"oops\n"}
    assert trailer.found == (4, 6, 0)
    assert trailer.says({"stdout": 4, "stderr": 5}) is None  # a byte it emitted did not arrive: not trusted
    out, trailer = feed([("stdout", b"out\n"), ("stderr", b"oops!\n"), ("stderr", REAL)])
    assert trailer.says({"stdout": 4, "stderr": 6}) == 0


def test_text_that_only_looks_like_a_trailer_is_passed_on_whole():
    forged = b"\x1eagentdock-end 1 2 3\x1e"
    out, trailer = feed([("stderr", forged), ("stderr", b"more"), ("stderr", b"\x1eagentdock-e")])
    assert out["stderr"] == forged + b"more\x1eagentdock-e"
    assert trailer.found is None


def test_a_stream_cut_before_its_trailer_says_nothing():
    out, trailer = feed([("stderr", b"oops\n"), ("stderr", REAL[:-1])])
    assert out["stderr"] == b"oops\n" + REAL[:-1]
    assert trailer.says({"stdout": 0, "stderr": 5 + len(REAL) - 1}) is None
