"""Masking at the record boundary (issue 16): what a session writes into a record (a message, a task,
a group, a device, a spawn's or a run's prompt) is masked for the secrets it holds before it is stored.

Which secrets a session holds: those named by any run of its tree (a child of the local user and
every session spawned below it: its launching run, the runs it or its relatives created), by any run
on a device one of the tree's runs used (a device's files outlive a run), and by the profile any
session of the tree was spawned under. A secret held by one session of a tree can reach the others
(a parent gives a child its device, a prompt, a file), so the tree holds it as a whole. The local
user holds every stored secret.

Free text and JSON are masked (`secrets.Masker`: the value and its common encodings become
`********`); a field that is an id or a label (a correlation id, an idempotency key, an identifier)
is kept as given, so one holding a secret is refused instead. A removed secret is no longer masked:
its value is gone from the home."""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any, TypeVar

from pydantic import BaseModel

from engine import errors
from engine.callers import Caller
from engine.secrets import NAME, Masker, SecretStore
from engine.store import Store

M = TypeVar("M", bound=BaseModel)
NOTHING = Masker([])
CACHED = 64


class Masking:
    def __init__(self, store: Store, secrets: SecretStore) -> None:
        self.store = store
        self.secrets = secrets
        self._trees: dict[str, str] = {}
        """A session's tree, which never changes, read once."""
        self._maskers: dict[tuple[tuple[str, int, int], ...], Masker] = {}
        """Maskers by the secrets they mask (name, mtime, size): a secret set again gets a new one."""

    async def masker(self, caller: Caller) -> Masker:
        """What masks the caller's writes: the secrets it holds that are still stored."""
        stored = self._stored()
        if not stored:
            return NOTHING
        if caller.is_root:
            held: Iterable[str] = stored
        else:
            held = await self.store.quotas.secrets_of_tree(await self._tree(caller.session_id))
        key = tuple(sorted((name, *stored[name]) for name in held if name in stored))
        if not key:
            return NOTHING
        masker = self._maskers.get(key)
        if masker is None:
            values = self.secrets.environment([name for name, *_ in key], missing_ok=True)
            masker = Masker(list(values.values()))
            if len(self._maskers) >= CACHED:
                self._maskers.pop(next(iter(self._maskers)))
            self._maskers[key] = masker
        return masker

    async def _tree(self, session_id: str) -> str:
        if session_id not in self._trees:
            found = await self.store.quotas.session_tree(session_id)
            if found is None:  # a caller built in-process without a session row: a tree of its own
                return session_id
            self._trees[session_id] = found.tree
        return self._trees[session_id]

    def _stored(self) -> dict[str, tuple[int, int]]:
        """The stored secrets' names, each with its file's mtime and size (one directory read)."""
        try:
            entries = list(os.scandir(self.secrets.dir))
        except FileNotFoundError:
            return {}
        out = {}
        for entry in entries:
            if NAME.fullmatch(entry.name) and entry.is_file(follow_symlinks=False):
                st = entry.stat(follow_symlinks=False)
                out[entry.name] = (st.st_mtime_ns, st.st_size)
        return out


def refuse(mask: Masker, fields: dict[str, Any]) -> None:
    """Refuse, naming the field, an id or label that holds a secret (such fields are stored as given)."""
    for field, value in fields.items():
        if isinstance(value, str) and mask.finds(value):
            raise errors.InvalidInput(field, "holds the value of a secret your session's runs were given (or an "
                                             "encoding of it); this field is stored as given, so it cannot carry one",
                                      evidence={"masked": True})


def env(mask: Masker, values: dict[str, str] | None, field: str = "env") -> dict[str, str] | None:
    """An `env` mapping with its values masked; a name that holds a secret is refused (not echoed)."""
    if values is None or not mask:
        return values
    for i, name in enumerate(values):
        if mask.finds(name):
            raise errors.InvalidInput(field, f"the name of its variable number {i + 1} holds the value of a secret "
                                             "your session's runs were given", evidence={"masked": True})
    return {k: mask.line(v) for k, v in values.items()}


def masked(mask: Masker, model: M, *, text: Iterable[str] = (), json: Iterable[str] = (),
           envs: Iterable[str] = (), ids: Iterable[str] = ()) -> M:
    """`model` as it may be stored: its `text` and `json` fields masked, its `envs` values masked, and
    refused (naming the field) if one of its `ids` holds a secret. Only fields the request gave are
    touched, so what it left out stays left out."""
    if not mask:
        return model
    given = model.model_fields_set
    refuse(mask, {f: getattr(model, f) for f in ids if f in given})
    update: dict[str, Any] = {}
    for f in text:
        if f in given and isinstance(getattr(model, f), str):
            update[f] = mask.line(getattr(model, f))
    for f in json:
        if f in given and getattr(model, f) is not None:
            update[f] = mask.value(getattr(model, f))
    for f in envs:
        if f in given and getattr(model, f) is not None:
            update[f] = env(mask, getattr(model, f), f)
    return model.model_copy(update=update) if update else model
