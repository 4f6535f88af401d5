"""Read one YAML config file without trusting it.

``yaml.safe_load`` builds no objects, but two things still go wrong with a hostile or mistaken file: an alias
bomb (a few lines whose anchors refer to each other expand to billions of values when the config is merged)
and error messages that quote the file (``base: /etc/shadow`` would print a line of it). Here the document is
composed first, its size after alias expansion is checked against a small budget, and every error names the
file, the line and the problem, never the file's contents.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from selfsup.errors import ConfigError

MAX_VALUES = 10_000  # values after expanding aliases; a real config has a few hundred
KEY_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")


def _expanded_size(root: yaml.Node, path: Path) -> int:
    """Number of nodes once every alias is replaced by a copy of its anchor, stopping past ``MAX_VALUES``."""
    sizes: dict[int, int] = {}  # an anchored node's expanded size, computed once (aliases share the node)
    active: set[int] = set()

    def size(node: yaml.Node) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in active:
            raise ConfigError(f"{path}: line {node.start_mark.line + 1}: an alias refers to a node that contains it "
                              "(recursive YAML); expected plain values")
        active.add(key)
        if isinstance(node, yaml.MappingNode):
            children = [part for pair in node.value for part in pair]
        elif isinstance(node, yaml.SequenceNode):
            children = node.value
        else:
            children = []
        total = 1
        for child in children:
            total += size(child)
            if total > MAX_VALUES:
                raise ConfigError(f"{path}: its YAML aliases expand to more than {MAX_VALUES} values (an alias "
                                  "bomb?); expected a config of plain values")
        active.discard(key)
        sizes[key] = total
        return total

    return size(root)


def _check_top_level(node: yaml.Node, path: Path) -> None:
    if not isinstance(node, yaml.MappingNode):
        raise ConfigError(f"{path}: expected a mapping of config keys at the top level "
                          "(is this a selfsup YAML config?)")
    for key, _ in node.value:
        if not (isinstance(key, yaml.ScalarNode) and KEY_NAME.fullmatch(key.value)):
            raise ConfigError(f"{path}: line {key.start_mark.line + 1}: the top-level key is not a config section "
                              "name such as data or train (is this a selfsup YAML config?)")


def read_config_yaml(path: Path) -> dict[str, Any]:
    """The top-level mapping of the YAML file ``path`` (``{}`` for an empty file).

    Raises:
        ConfigError: unreadable, not UTF-8 text, not valid YAML, not a mapping of config sections, or aliases
            that expand past ``MAX_VALUES``; one line naming the file (and line), never quoting it.
    """
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the config file ({e.strerror or type(e).__name__})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not a text file (byte {e.start} is not UTF-8); expected a YAML config") from None
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return {}
        _check_top_level(node, path)
        _expanded_size(node, path)
        return loader.construct_document(node)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{path}: not valid YAML ({e.problem or e.context}{where})") from None
    except yaml.YAMLError as e:  # ReaderError (control characters) and the like: no quote of the file either
        raise ConfigError(f"{path}: not valid YAML ({type(e).__name__})") from None
    except RecursionError:
        raise ConfigError(f"{path}: YAML nested too deeply; expected a config of plain values") from None
    finally:
        loader.dispose()
