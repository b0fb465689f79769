"""``@ds.cache.cached(ttl=60, key="user:{user_id}")`` over async functions.

The key template is formatted with the call's bound arguments (defaults applied); without a
template the key is the function's module and qualified name plus a digest of the
arguments. A call is ``remember(key, lambda: fn(*args, **kwargs), ...)``, so it gets single
flight across instances, and with ``model=`` (or a pydantic return annotation) each caller
gets a validated model.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import typing
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

import orjson
from pydantic import BaseModel

from strata.errors import InvalidKeyError, InvalidValueError

if TYPE_CHECKING:
    from strata.cache import Namespace

__all__ = ["cached"]

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])


def _safe(text: str) -> str:
    return text.replace(":", ".").replace("*", "_") or "_"


def _return_model(fn: Callable[..., Any]) -> type[BaseModel] | None:
    try:
        hint = typing.get_type_hints(fn).get("return")
    except Exception:  # unresolvable annotations: no model, values come back as JSON
        return None
    return hint if isinstance(hint, type) and issubclass(hint, BaseModel) else None


def cached(
    ns: Namespace,
    *,
    ttl: Any = None,
    key: str | None = None,
    model: type[BaseModel] | None = None,
    **options: Any,
) -> Callable[[F], F]:
    def wrap(fn: F) -> F:
        if not inspect.iscoroutinefunction(fn):
            raise InvalidValueError(f"cached() decorates async functions, not {fn!r}")
        sig = inspect.signature(fn)
        out_model = model or _return_model(fn)
        base = [_safe(fn.__module__), _safe(fn.__qualname__)]

        def key_of(args: tuple[Any, ...], kwargs: dict[str, Any]) -> object:
            bound = sig.bind(*args, **kwargs)
            bound.apply_defaults()
            if key is not None:
                try:
                    return key.format(**bound.arguments)
                except (KeyError, IndexError, ValueError, AttributeError) as exc:
                    raise InvalidKeyError(
                        f"cached key template {key!r} does not fit {fn.__qualname__}: {exc!r}",
                        key=key,
                    ) from None
            blob = orjson.dumps(
                bound.arguments, default=repr, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS
            )
            return [*base, hashlib.blake2b(blob, digest_size=12).hexdigest()]

        @functools.wraps(fn)
        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            return await ns.remember(
                key_of(args, kwargs), lambda: fn(*args, **kwargs), ttl, model=out_model, **options
            )

        return typing.cast(F, wrapper)

    return wrap
