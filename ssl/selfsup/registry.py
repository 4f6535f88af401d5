"""Method registry: each method is one module ``selfsup.methods.NAME`` whose ``SPEC`` says all the rest of the code
needs to know about it. No metaclass, no base class, no list of names to edit (lightly's ``METHODS`` dict, found).

:func:`specs` imports every module of :mod:`selfsup.methods` whose name has no leading underscore and keeps those
that define ``SPEC`` (a :class:`MethodSpec` named as the module); ``base`` (the interface) defines none. The config
schema (``method.NAME`` sections, their ranges and choices, the view rule), the builder that ``build_method`` calls
and the contract test (``tests/methods/test_method_contract.py``) are all read from the specs, so adding
``methods/foo.py`` with its ``SPEC`` is the only edit a new method needs.

A method module is imported whenever a config is read, so it must import quickly: torch, timm and lightly are
imported by its builder (from the private module that holds the ``nn.Module``), never at the module's top. It must
not import :mod:`selfsup.config` either (the schema is being assembled from it).
"""

from __future__ import annotations

import functools
import importlib
import pkgutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import nn

Builder = Callable[..., "nn.Module"]
DEFAULT = "dino"  # method.name when a config names none
PACKAGE = "selfsup.methods"


def _no_overrides(folder: Path) -> Sequence[str]:
    return ()


@dataclass(frozen=True)
class MethodSpec:
    """What a method declares beside its module.

    Args:
        name: ``method.name``; the same as the module's name (``selfsup.methods.NAME``).
        config: the dataclass of the ``method.NAME`` section (every field a keyword argument of ``build``).
        build: ``build(make_backbone=, n_global=, **section, **build_args(cfg))`` -> the method's ``nn.Module``
            (:class:`selfsup.methods.base.Method`); ``make_backbone(**overrides)`` makes a fresh backbone.
        ranges: section key -> interval (``"[0, 1]"``, ``"(0, inf)"``; ``[``/``]`` include the end), checked for
            the number and each item of a list; keys relative to the section (``"out_dim"``).
        choices: section key -> the allowed strings.
        check: further checks of the section (combinations, list shapes), raising a one-line ``ConfigError``.
        multi_crop: any number of global and local views; False: exactly 2 global views and no local ones.
        min_views: the fewest views (global + local) a step may have.
        build_args: extra keyword arguments of ``build`` taken from other sections of the whole config.
        paper: (title, arXiv id) for the model card of an export; None = no paper to cite.
        command: the help line of a ``selfsup NAME CONFIG [key=value ...]`` command (``selfsup pretrain`` with
            ``method.name=NAME``); "" = no such command.
        tiny_test_overrides: ``f(folder)`` -> dotlist overrides that make the method small enough for the
            contract test (``tests/methods/test_method_contract.py``, a tiny ViT at 32 px); ``folder`` is an empty
            folder for anything the method needs on disk (distill: its teacher).
    """

    name: str
    config: type
    build: Builder
    ranges: Mapping[str, str] = field(default_factory=dict)
    choices: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    check: Callable[[Any], None] | None = None
    multi_crop: bool = False
    min_views: int = 2
    build_args: Callable[[Any], dict[str, Any]] | None = None
    paper: tuple[str, str] | None = None
    command: str = ""
    tiny_test_overrides: Callable[[Path], Sequence[str]] = _no_overrides


@functools.cache
def specs() -> dict[str, MethodSpec]:
    """Every method's spec by name, in the order of the module names (found once per process).

    Raises:
        ImportError: a method module that cannot be imported (its own message: never read as an unknown method).
        TypeError: a ``SPEC`` that is not a :class:`MethodSpec` or is named unlike its module.
    """
    package = importlib.import_module(PACKAGE)
    found: dict[str, MethodSpec] = {}
    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        spec = getattr(importlib.import_module(f"{PACKAGE}.{info.name}"), "SPEC", None)
        if spec is None:  # not a method (base: the interface)
            continue
        if not isinstance(spec, MethodSpec) or spec.name != info.name:
            raise TypeError(f"{PACKAGE}.{info.name}.SPEC: expected a MethodSpec named {info.name!r}, got {spec!r}")
        found[spec.name] = spec
    return found


def get_spec(name: str) -> MethodSpec:
    """The spec of ``method.name``, or a one-line ``ConfigError`` that lists the registered names."""
    known = specs()
    if name not in known:
        from selfsup.errors import ConfigError

        raise ConfigError(f"bad value for 'method.name': '{name}' (expected one of: {', '.join(known)})")
    return known[name]


def get_builder(name: str) -> Builder:
    """The builder of ``method.name``. It imports the method's module (torch, lightly) when called: an ImportError
    there (a missing dependency) propagates with its own message."""
    return get_spec(name).build
