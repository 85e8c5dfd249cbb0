"""Secrets: named values (API keys, a credentials file) kept under the home with owner-only
permissions, given to the runs that name them and to nothing else.

Each secret is one file `$AGENTDOCK_HOME/secrets/NAME` (mode 0600, in a 0700 directory), written
atomically. The database never holds a value: a run records only the names it asked for, and its
launch resolves them into the run process's environment. `Masker` hides the values wherever a run
prints them, before its output or events are written.
"""

from __future__ import annotations

import base64
import json
import os
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from pydantic import BaseModel, ConfigDict

from engine import errors

NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
RESERVED = frozenset({"PATH", "HOME", "USER", "SHELL", "PWD", "IFS", "ENV", "BASH_ENV", "SHELLOPTS", "BASHOPTS",
                      "PS4", "CDPATH"})
"""Names a secret may not take: it becomes an environment variable of the run, and the sandbox's shell and
run wrapper depend on these (as on `AGENTDOCK_*` and `LD_*`)."""
MIN_VALUE_BYTES = 8
"""Shorter values would be masked wherever they occur in ordinary text, and are no credential anyway."""
MAX_VALUE_BYTES = 32_768
MAX_PER_RUN = 32
MASK = "********"


class SecretInfo(BaseModel):
    """A secret as anyone may see it: its name and when it was set, never its value."""

    model_config = ConfigDict(frozen=True)

    name: str
    size: int
    """Bytes of the value."""
    updated_at: datetime


class SecretList(BaseModel):
    model_config = ConfigDict(frozen=True)

    data: list[SecretInfo]


def check_name(name: object, field: str = "name") -> str:
    """A valid secret name, or `InvalidInput` naming `field` (the value's own text is echoed clipped,
    never a secret's value: names are not secret)."""
    if not isinstance(name, str) or not NAME.fullmatch(name):
        shown = errors.clip(name) if isinstance(name, str) else type(name).__name__
        raise errors.InvalidInput(field, f"{shown!r} is not a valid secret name; use letters, digits and "
                                         "underscores, not starting with a digit, at most 128 characters "
                                         "(it becomes the run's environment variable)")
    if name in RESERVED or name.startswith(("AGENTDOCK_", "LD_")):
        raise errors.InvalidInput(field, f"{name!r} is reserved: the sandbox's shell and run wrapper depend on it")
    return name


def check_names(names: object, field: str = "secrets") -> list[str]:
    """A run's (or a profile's) `secrets`: a list of distinct valid names."""
    if names is None:
        return []
    if not isinstance(names, list):
        raise errors.InvalidInput(field, "must be a list of secret names, e.g. [\"ANTHROPIC_API_KEY\"]")
    if len(names) > MAX_PER_RUN:
        raise errors.InvalidInput(field, f"at most {MAX_PER_RUN} secrets")
    out: list[str] = []
    for i, name in enumerate(names):
        check_name(name, f"{field}.{i}")
        if name in out:
            raise errors.InvalidInput(f"{field}.{i}", f"{name!r} is named twice")
        out.append(name)
    return out


def normalize(value: bytes) -> str:
    """A value as given on stdin or in a file: one trailing newline dropped (`echo KEY | ...`), UTF-8,
    no NUL, within the bounds. The message never quotes the value."""
    if value.endswith(b"\r\n"):
        value = value[:-2]
    elif value.endswith(b"\n"):
        value = value[:-1]
    if b"\x00" in value:
        raise errors.InvalidInput("value", "a secret may not contain NUL bytes")
    if len(value) < MIN_VALUE_BYTES:
        raise errors.InvalidInput("value", f"a secret is at least {MIN_VALUE_BYTES} bytes (got {len(value)}); "
                                           "give it on stdin or with --file")
    if len(value) > MAX_VALUE_BYTES:
        raise errors.InvalidInput("value", f"a secret is at most {MAX_VALUE_BYTES} bytes (got {len(value)})")
    try:
        return value.decode()
    except UnicodeDecodeError:
        raise errors.InvalidInput("value", "a secret must be UTF-8 text (it travels in an environment "
                                           "variable)") from None


class SecretStore:
    """The secrets under one home. Every method checks the name first; nothing is written on bad input."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory

    def _path(self, name: str, field: str = "name") -> Path:
        return self.dir / check_name(name, field)

    def _ensure_dir(self) -> None:
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.dir, 0o700)

    def set(self, name: str, value: bytes) -> SecretInfo:
        path = self._path(name)
        text = normalize(value)
        self._ensure_dir()
        tmp = self.dir / f".{name}.{os.getpid()}.tmp"
        tmp.unlink(missing_ok=True)  # left by a set that died here with the same pid
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(text.encode())
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return self._info(name, path)

    def remove(self, name: str) -> SecretInfo:
        path = self._path(name)
        if not path.is_file():
            raise errors.NotFound("secret", name, suggested_command="agentdock secrets list")
        info = self._info(name, path)
        path.unlink()
        return info

    def list(self) -> SecretList:
        if not self.dir.is_dir():
            return SecretList(data=[])
        found = [self._info(p.name, p) for p in sorted(self.dir.iterdir())
                 if p.is_file() and NAME.fullmatch(p.name)]
        return SecretList(data=found)

    def require(self, names: list[str], field: str = "secrets") -> None:
        """Refuse (naming the first missing one) unless every named secret is set."""
        for i, name in enumerate(names):
            if not self._path(name, f"{field}.{i}").is_file():
                raise errors.InvalidInput(
                    f"{field}.{i}", f"no secret named {name!r}; set it first (value on stdin)",
                    suggested_command=f"agentdock secrets set {name}", evidence={"secret": name})

    def environment(self, names: list[str], *, missing_ok: bool = False) -> dict[str, str]:
        """The named secrets' values, by name, for a run's process; `InvalidInput` if one is gone
        (with `missing_ok`, those still set)."""
        if not missing_ok:
            self.require(names)
        return {name: path.read_text() for name in names if (path := self._path(name)).is_file()}

    @staticmethod
    def _info(name: str, path: Path) -> SecretInfo:
        st = path.stat()
        return SecretInfo(name=name, size=st.st_size, updated_at=datetime.fromtimestamp(st.st_mtime, UTC))


URLSAFE = str.maketrans("+/", "-_")


def forms(value: str) -> set[str]:
    """The ways a value is commonly written, each looked for on its own (and, by `Masker`, in any mix of
    upper and lower case): as is and JSON-escaped (and each line of a multi-line value), reversed, hex,
    percent-encoded (the usual way and every byte), and base64 (standard and URL-safe): whole, and the
    part that is the same wherever the value sits inside a longer encoded text (at each of base64's three
    alignments). A value, or a form of it, shorter than `MIN_VALUE_BYTES` is not looked for (it would hide
    ordinary text)."""
    raw = value.encode()
    if len(raw) < MIN_VALUE_BYTES:  # no credential; its forms would hide ordinary text
        return set()
    found = {value, json.dumps(value)[1:-1]}
    for form in list(found):
        found.update(part.strip() for part in form.splitlines())
    found |= {value[::-1], raw.hex(), quote(value, safe=""), "".join(f"%{b:02x}" for b in raw)}
    encoded = {base64.b64encode(raw).decode()}
    for shift in range(3):  # the value after `shift` bytes of something else: only its inner characters are fixed
        text = base64.b64encode(b"\0" * shift + raw).decode()
        encoded.add(text[-(-8 * shift // 6):8 * (shift + len(raw)) // 6])
    found |= encoded | {e.translate(URLSAFE) for e in encoded}
    return {f for f in found if len(f) >= MIN_VALUE_BYTES}


class Masker:
    """Replaces secret values in text with `********`, in each of their common forms (`forms`), whatever
    their case.

    `line()` masks a complete text (a structured runtime's JSON line, an event's strings, a record's
    field). `stream()` masks a stream that arrives in arbitrary chunks: the end of a chunk that could be
    the start of a value is held back until the next chunk says (or `flush()` at the end), so a value
    split across two chunks is masked too. `value()` masks every string, key and number of a JSON value."""

    def __init__(self, values: list[str]) -> None:
        needles: set[str] = set()
        for value in values:
            needles |= {form.lower() for form in forms(value)}
        self.needles = sorted(needles, key=len, reverse=True)
        self._held: dict[str, str] = {}

    def __bool__(self) -> bool:
        return bool(self.needles)

    @staticmethod
    def _folded(text: str) -> str:
        """`text` in lower case, character for character (the few characters whose lower case is longer
        are kept as they are, so positions stay the same)."""
        folded = text.lower()
        return folded if len(folded) == len(text) else "".join(c if len(c.lower()) != 1 else c.lower() for c in text)

    def line(self, text: str) -> str:
        if not self.needles:
            return text
        folded = self._folded(text)
        spans = []
        for needle in self.needles:
            i = folded.find(needle)
            while i != -1:
                spans.append((i, i + len(needle)))
                i = folded.find(needle, i + len(needle))
        if not spans:
            return text
        out, pos, end = [], 0, -1
        for start, stop in sorted(spans):
            if start < end:  # overlaps the span being masked: widen it
                end = max(end, stop)
                continue
            if end != -1:
                out += [text[pos:begin], MASK]
                pos = end
            begin, end = start, stop
        out += [text[pos:begin], MASK, text[end:]]
        return "".join(out)

    def finds(self, text: str) -> bool:
        """Whether `text` holds a value in one of its forms."""
        folded = self._folded(text)
        return any(needle in folded for needle in self.needles)

    def value(self, obj: Any) -> Any:
        """A JSON-like value with every string, key and number that holds a value masked (a number that
        does becomes the string `********`; keys that become equal are told apart by `#2`, `#3`...)."""
        if not self.needles:
            return obj
        if isinstance(obj, str):
            return self.line(obj)
        if isinstance(obj, bool) or obj is None:
            return obj
        if isinstance(obj, (int, float)):
            return MASK if self.finds(str(obj)) else obj
        if isinstance(obj, list):
            return [self.value(v) for v in obj]
        if isinstance(obj, dict):
            out: dict[str, Any] = {}
            for key, v in obj.items():
                masked, n = self.line(key), 1
                while (masked if n == 1 else f"{masked}#{n}") in out:
                    n += 1
                out[masked if n == 1 else f"{masked}#{n}"] = self.value(v)
            return out
        return obj

    def stream(self, name: str, text: str) -> str:
        text = self.line(self._held.pop(name, "") + text)
        folded = self._folded(text)
        keep = 0
        for needle in self.needles:  # the longest end of `text` that starts some value
            i = folded.find(needle[0], max(0, len(folded) - len(needle) + 1))
            while i != -1 and len(folded) - i > keep:
                if needle.startswith(folded[i:]):
                    keep = len(folded) - i
                    break
                i = folded.find(needle[0], i + 1)
        if keep:
            self._held[name] = text[-keep:]
            text = text[:-keep]
        return text

    def flush(self, name: str) -> str:
        return self.line(self._held.pop(name, ""))
