"""Method registry: ``method.name`` -> builder. No metaclass, no base class (lightly's ``METHODS`` dict)."""

from __future__ import annotations

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
    # Importing the package modules fills the registry.
    import selfsup.methods.dino  # noqa: F401

    for mod in ("mocov3", "moby", "simclr", "distill"):
        try:
            __import__(f"selfsup.methods.{mod}")
        except ModuleNotFoundError:
            pass
    if name not in METHODS:
        from selfsup.errors import ConfigError

        raise ConfigError(f"bad value for 'method.name': '{name}' (expected one of: {', '.join(sorted(METHODS))})")
    return METHODS[name]
