"""Initial backbone weights from a file (``model.pretrained``): continued domain pretraining.

``model.pretrained`` names a selfsup export (``model.safetensors`` + ``config.json``), any ``local-dir:`` folder
timm reads, or a ``.safetensors`` file. Its tensors go into the freshly built backbone (student and teacher alike:
the methods copy the backbone they are given); heads are built fresh. ``true`` is not handled here: timm itself
downloads its published weights (``timm.create_model(..., pretrained=True)``).

Only safetensors are read (no pickles). A file from another architecture is one line naming the first missing,
unexpected or mis-shaped key, never a silent partial load.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from selfsup.errors import CheckpointError, ConfigError

WEIGHTS_NAME = "model.safetensors"  # what timm's save_for_hf (and so `selfsup export`) writes


def pretrained_file(value: str) -> Path:
    """The safetensors file ``model.pretrained`` names (a folder holding ``model.safetensors``, or the file)."""
    path = Path(value.removeprefix("local-dir:"))
    if path.is_dir():
        path = path / WEIGHTS_NAME
        if not path.is_file():
            raise ConfigError(f"model.pretrained={value}: no {WEIGHTS_NAME} in that folder; expected a selfsup export "
                              f"or a timm local-dir: folder")
        return path
    if not path.is_file():
        raise ConfigError(f"model.pretrained={value}: does not exist; expected false, true, a selfsup export folder, "
                          f"a local-dir: folder or a .safetensors file")
    if path.suffix != ".safetensors":
        raise ConfigError(f"model.pretrained={value}: not a .safetensors file (pickled checkpoints are not read)")
    return path


def load_pretrained(model: nn.Module, value: str) -> None:
    """Load the backbone weights named by ``value`` into ``model`` strictly.

    A classifier in the file (``pretrained_cfg['classifier']``, e.g. ``head.*`` of an ImageNet checkpoint) is
    dropped: the backbone has ``num_classes=0``.

    Raises:
        ConfigError: the path is not there. CheckpointError: unreadable file or a key/shape mismatch.
    """
    from safetensors.torch import load_file

    path = pretrained_file(value)
    try:
        state = load_file(str(path))
    except Exception as e:  # safetensors raises its own error types for corrupt headers
        raise CheckpointError(f"model.pretrained={value}: {path} is not a readable safetensors file ({e})") from None
    own = model.state_dict()
    classifier = (getattr(model, "pretrained_cfg", None) or {}).get("classifier")
    if classifier:
        state = {k: v for k, v in state.items() if k in own or not k.startswith(f"{classifier}.")}
    problem = next((f"missing key '{k}'" for k in own if k not in state), None)
    problem = problem or next((f"unexpected key '{k}'" for k in state if k not in own), None)
    problem = problem or next((f"key '{k}' has shape {tuple(state[k].shape)}, the model {tuple(v.shape)}"
                               for k, v in own.items() if tuple(state[k].shape) != tuple(v.shape)), None)
    if problem:
        raise CheckpointError(f"model.pretrained={value}: {path} does not fit the configured backbone "
                              f"({type(model).__name__}): {problem}; expected weights of the same model.name and "
                              f"model.args")
    model.load_state_dict(state, strict=True)
