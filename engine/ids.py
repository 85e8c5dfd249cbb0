"""Record ids and their shape: `<prefix>_<20 lowercase hex>`, as `engine.store` makes them.

An id is checked by shape wherever it comes in (tool inputs, HTTP paths and queries, the client),
so a malformed id is an `invalid_input` naming its field, never a path segment steering a request.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import BeforeValidator, StringConstraints

from engine import errors

HEX_DIGITS = 20


@dataclass(frozen=True)
class Shape:
    """The ids of one kind of record (or of several kinds that share a field, like a device's)."""

    what: str
    """How a message names it: `run`, `sandbox or computer`."""
    prefixes: tuple[str, ...]

    @property
    def pattern(self) -> str:
        prefix = self.prefixes[0] if len(self.prefixes) == 1 else f"(?:{'|'.join(self.prefixes)})"
        return rf"^{prefix}_[0-9a-f]{{{HEX_DIGITS}}}$"

    def matches(self, value: object) -> bool:
        return isinstance(value, str) and re.fullmatch(self.pattern, value) is not None

    def problem(self) -> str:
        starts = " or ".join(f"{p}_" for p in self.prefixes)
        return (f"must be a {self.what} id: {starts} then {HEX_DIGITS} lowercase hex digits, "
                f"e.g. {self.prefixes[0]}_0123456789abcdef0123")

    def check(self, value: object, field: str) -> str:
        """`value` if it has the shape, else `InvalidInput` naming `field` (without echoing the value)."""
        if not self.matches(value):
            raise errors.InvalidInput(field, self.problem())
        return value  # type: ignore[return-value]

    def before(self, value: Any) -> Any:
        """Pydantic's check, with a message that says what an id looks like (non-strings fall through
        to pydantic's own "should be a valid string")."""
        if isinstance(value, str) and not self.matches(value):
            raise ValueError(self.problem())
        return value


RUN = Shape("run", ("run",))
SANDBOX = Shape("sandbox", ("sbx",))
COMPUTER = Shape("computer", ("cmp",))
DEVICE = Shape("sandbox or computer", ("sbx", "cmp"))
SESSION = Shape("session", ("ses",))
GROUP = Shape("agent run group", ("grp",))
ENTRY = Shape("group entry", ("agre",))
DISPATCH = Shape("group dispatch", ("gdsp",))
TASK = Shape("task", ("tsk",))
TASK_RUN = Shape("task run", ("trun",))
CHANNEL = Shape("channel", ("chn",))
MESSAGE = Shape("message", ("msg",))
PROFILE = Shape("agent runtime profile", ("arp",))
APPROVAL = Shape("approval", ("apr",))


RunId = Annotated[str, StringConstraints(pattern=RUN.pattern), BeforeValidator(RUN.before)]
SandboxId = Annotated[str, StringConstraints(pattern=SANDBOX.pattern), BeforeValidator(SANDBOX.before)]
ComputerId = Annotated[str, StringConstraints(pattern=COMPUTER.pattern), BeforeValidator(COMPUTER.before)]
DeviceId = Annotated[str, StringConstraints(pattern=DEVICE.pattern), BeforeValidator(DEVICE.before)]
"""A sandbox or a computer: `sbx_...` or `cmp_...`."""
SessionId = Annotated[str, StringConstraints(pattern=SESSION.pattern), BeforeValidator(SESSION.before)]
GroupId = Annotated[str, StringConstraints(pattern=GROUP.pattern), BeforeValidator(GROUP.before)]
DispatchId = Annotated[str, StringConstraints(pattern=DISPATCH.pattern), BeforeValidator(DISPATCH.before)]
TaskId = Annotated[str, StringConstraints(pattern=TASK.pattern), BeforeValidator(TASK.before)]
TaskRunId = Annotated[str, StringConstraints(pattern=TASK_RUN.pattern), BeforeValidator(TASK_RUN.before)]
ChannelId = Annotated[str, StringConstraints(pattern=CHANNEL.pattern), BeforeValidator(CHANNEL.before)]
MessageId = Annotated[str, StringConstraints(pattern=MESSAGE.pattern), BeforeValidator(MESSAGE.before)]
ProfileId = Annotated[str, StringConstraints(pattern=PROFILE.pattern), BeforeValidator(PROFILE.before)]
ApprovalId = Annotated[str, StringConstraints(pattern=APPROVAL.pattern), BeforeValidator(APPROVAL.before)]
