"""Keyed-cache keys: segments, namespaces, hash tags and wildcard generations.

A key is a string (``"42:profile"``, split on ``:``) or a sequence of segments
(``["42", "profile"]``). A namespace is a hash tag plus base segments:

    ds.cache                              tag {prefix:cache}          base ()
    ds.cache.namespace("users", "v2")     tag {prefix:cache:users}    base ("v2",)
      .namespace("sessions")              tag {prefix:cache:users}    base ("v2", "sessions")

so every Redis key and counter of one top-level namespace shares a hash tag (one Redis
Cluster slot) and nested namespaces are prefixes inside it. A key's *path* is the
``:``-joined base + segments; its *prefixes* are the paths of every proper prefix of the
path (``""`` included). Wildcard invalidation of ``["42", "*"]`` bumps the generation of
the prefix ``"v2:42"``; a key resolves to its data under the current generation of each of
its prefixes, so the bump orphans every key below it at once (O(1), never a SCAN).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from strata.errors import InvalidKeyError

__all__ = ["MAX_KEY_LENGTH", "Scope", "split_key"]

MAX_KEY_LENGTH = 1024
_FORBIDDEN = (":", "*")
_TAG_FORBIDDEN = ("{", "}")


def _segment(raw: object, key: object) -> str:
    if isinstance(raw, bool) or not isinstance(raw, str | int):
        raise InvalidKeyError(f"key segment must be a str or an int, got {raw!r}", key=key)
    seg = str(raw)
    if not seg:
        raise InvalidKeyError(f"empty segment in key {key!r}", key=key)
    return seg


def split_key(key: object, *, wildcard: bool = False) -> tuple[tuple[str, ...], bool]:
    """``(segments, ends_with_wildcard)``. InvalidKeyError for an empty key, an empty
    segment, ``:`` or ``*`` inside a segment (``*`` alone is allowed as the last segment
    only with ``wildcard``), or a key longer than MAX_KEY_LENGTH."""
    if isinstance(key, str):
        if not key:
            raise InvalidKeyError("empty key", key=key)
        parts: Sequence[object] = key.split(":")
    elif isinstance(key, Sequence) and not isinstance(key, bytes | bytearray):
        parts = key
        for raw in parts:
            if isinstance(raw, str) and ":" in raw:
                raise InvalidKeyError(f"':' inside the key segment {raw!r}", key=key)
    else:
        raise InvalidKeyError(f"a key is a str or a sequence of segments, got {key!r}", key=key)
    if not parts:
        raise InvalidKeyError("empty key", key=key)
    segs = [_segment(p, key) for p in parts]
    star = False
    if segs[-1] == "*" and wildcard:
        star = True
        segs.pop()
    for seg in segs:
        if "*" in seg:
            raise InvalidKeyError(
                f"'*' inside the key segment {seg!r}"
                + ("" if wildcard else " (wildcards are for invalidate())"),
                key=key,
            )
    if not segs and not star:
        raise InvalidKeyError("empty key", key=key)
    if sum(len(s) + 1 for s in segs) > MAX_KEY_LENGTH:
        raise InvalidKeyError(f"key longer than {MAX_KEY_LENGTH} characters", key=key)
    return tuple(segs), star


@dataclass(frozen=True, slots=True)
class Scope:
    """Where one namespace's keys live (see the module docstring)."""

    tag: str  # "{prefix:cache:users}": every Redis key of this namespace starts with it
    top: str  # top-level namespace name ("" for the root cache): the bus routes by it
    base: tuple[str, ...]
    name: str  # the namespace path, for the Observer ("" for the root cache)

    @classmethod
    def root(cls, key_prefix: str) -> Scope:
        return cls(tag="{" + key_prefix + ":cache}", top="", base=(), name="")

    def child(self, key_prefix: str, name: str, version: str | None) -> Scope:
        segs, _ = split_key([name] if version is None else [name, version])
        for seg in segs:
            if any(c in seg for c in _TAG_FORBIDDEN):
                raise InvalidKeyError(f"namespace name {seg!r} holds '{{' or '}}'", key=seg)
        full = ":".join((self.name, *segs)) if self.name else ":".join(segs)
        if not self.top:  # a top-level namespace: its own hash tag
            top = segs[0]
            return Scope(
                tag="{" + f"{key_prefix}:cache:{top}" + "}",
                top=top,
                base=segs[1:],
                name=full,
            )
        return Scope(tag=self.tag, top=self.top, base=self.base + segs, name=full)

    def path(self, segments: tuple[str, ...]) -> str:
        return ":".join(self.base + segments)

    def prefixes(self, segments: tuple[str, ...]) -> tuple[str, ...]:
        """The generation fields a key depends on: every proper prefix of its path."""
        full = self.base + segments
        return tuple(":".join(full[:i]) for i in range(len(full)))

    def durable_key(self, path: str) -> str:
        return f"{self.tag}:{path}"
