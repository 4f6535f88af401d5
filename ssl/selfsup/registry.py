"""Method registry: ``method.name`` -> builder. No metaclass, no base class (lightly's ``METHODS`` dict)."""

from __future__ import annotations

import importlib
from typing import Callable

from torch import nn

Builder = Callable[..., nn.Module]
METHODS: dict[str, Builder] = {}


def register(name: str) -> Callable[[Builder], Builder]:
    """Decorator: ``@register("dino")`` adds a builder to :data:`METHODS`."""

    def wrap(fn: Builder) -> Builder:
        METHODS[name] = fn
        return fn

    return wrap


def get_builder(name: str) -> Builder:
    """The builder of ``method.name``; its module (``selfsup.methods.NAME``) is imported on first use.

    Only the requested method is imported, and an ImportError of its module (a missing dependency) propagates with
    its own message: it is never mistaken for an unknown method name.
    """
    if name not in METHODS:
        from selfsup.config import METHODS as KNOWN

        if name not in KNOWN:
            from selfsup.errors import ConfigError

            raise ConfigError(f"bad value for 'method.name': '{name}' (expected one of: {', '.join(KNOWN)})")
        importlib.import_module(f"selfsup.methods.{name}")  # its @register fills METHODS
    return METHODS[name]
