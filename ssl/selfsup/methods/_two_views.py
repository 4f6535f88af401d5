"""The two-view contract of the contrastive methods (MoCo v3, MoBY, SimCLR): one view pair per image, no local crops.

The config validation refuses other view counts before anything is built; these checks keep the same rule for
code that builds or calls a method directly.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from selfsup.errors import ConfigError

if TYPE_CHECKING:  # imported by the method specs, which a config reads: no torch at import
    from torch import Tensor


def require_two_global_views(method: str, n_global: int) -> None:
    """For a method's builder: ``views.n_global`` must be 2."""
    if n_global != 2:
        raise ConfigError(f"bad value for 'views.n_global': {n_global} ({method} needs exactly 2)")


def require_two_views(method: str, views: list[Tensor]) -> None:
    """For a method's forward: exactly two view tensors (b, c, h, w)."""
    if len(views) != 2:
        raise ConfigError(f"{method} takes exactly 2 views, got {len(views)} (set views.n_global=2, views.n_local=0)")
