"""An ONNX file behind the timm feature interface, so evaluation runs ONNX fp32/int8 exports like torch ones.

``selfsup export --onnx`` writes ``model.onnx`` / ``model.int8.onnx`` whose graph is the pooled pre-logits
features (b, 3, h, w) -> (b, d). Evaluation calls ``forward_head(forward_features(x), pre_logits=True)``; here
``forward_features`` runs the onnxruntime CPU session and ``forward_head`` is the identity.
"""

from __future__ import annotations

from pathlib import Path

import torch

from selfsup.onnx_export import ort_features, ort_session


class OnnxBackbone(torch.nn.Module):
    """onnxruntime (CPU) session of an exported ONNX file; inputs on another device are copied to the CPU and back."""

    def __init__(self, path: str | Path, *, num_features: int, threads: int | None = None) -> None:
        super().__init__()
        self.path = str(path)
        self.session = ort_session(path, threads=threads)
        self.num_features = num_features

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(b, 3, h, w) -> (b, d) features from onnxruntime."""
        return ort_features(self.session, x.float()).to(x.device)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """The graph already ends at the pooled features: identity."""
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)
