"""2D projection of embeddings for a scatter plot coloured by label.

UMAP (McInnes et al., 2018, https://arxiv.org/abs/1802.03426) when ``umap-learn`` is installed, else t-SNE
(van der Maaten & Hinton, 2008) from scikit-learn, else PCA (an exact SVD in torch); all seeded. Features are
L2-normalised first, so distances follow the cosine similarity the kNN evaluation uses.
Shapes: n = points, d = feature dim.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import torch
import torch.nn.functional as F

from evaluation.probes.pca_maps import principal_components
from selfsup.errors import ConfigError

METHODS = ("auto", "umap", "tsne", "pca", "none")


def resolve_method(method: str) -> str:
    """``auto`` -> the best installed of umap, tsne, pca; a named method that is not installed is a ConfigError."""
    if method not in METHODS:
        raise ConfigError(f"--projection {method!r}; expected one of {', '.join(METHODS)}")
    have_umap = importlib.util.find_spec("umap") is not None
    have_sklearn = importlib.util.find_spec("sklearn") is not None
    if method == "auto":
        return "umap" if have_umap else "tsne" if have_sklearn else "pca"
    if (method == "umap" and not have_umap) or (method == "tsne" and not have_sklearn):
        package = "umap-learn" if method == "umap" else "scikit-learn"
        raise ConfigError(f"--projection {method}: {package} is not installed; pip install 'selfsup[viz]' or use "
                          "--projection pca")
    return method


def project_2d(feats: torch.Tensor, *, method: str = "auto", seed: int = 0) -> tuple[np.ndarray, str]:
    """(n, d) features -> ((n, 2) float32 coordinates, the method used)."""
    method = resolve_method(method)
    x = F.normalize(feats.float(), dim=1)
    n = x.shape[0]
    if method == "umap" and n > 3:
        import umap

        coords = umap.UMAP(n_components=2, n_neighbors=min(15, n - 1), random_state=seed).fit_transform(x.numpy())
    elif method == "tsne" and n > 3:
        from sklearn.manifold import TSNE

        coords = TSNE(n_components=2, perplexity=min(30.0, (n - 1) / 3), init="pca",
                      random_state=seed).fit_transform(x.numpy())
    else:
        method = "pca"
        coords = principal_components(x, min(2, x.shape[1])).numpy()
    return np.asarray(coords, dtype=np.float32), method
