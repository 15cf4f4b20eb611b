"""Low-dimensional embeddings of latent states: PCA first, UMAP fitted on a subsample.

Estimators follow scikit-learn conventions: ``fit(X)``, ``transform(X)``, ``fit_transform(X)``, learned
attributes end in ``_``, bad input raises ``ValueError``. ``X`` is a numpy array or torch tensor of shape
``[..., d]``; outputs are numpy arrays ``[..., n_components]``. ``umap`` (and numba) are imported only inside
:meth:`UMAPEmbedder.fit`, so importing :mod:`attractorlab.dynamics` stays light.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator

import numpy as np
import torch
from sklearn.decomposition import PCA

_PCA_SOLVERS = ("auto", "full", "randomized")


def _as_matrix(X, name: str = "X") -> tuple[np.ndarray, tuple[int, ...]]:
    """Validate ``X [..., d]`` and return it as a float matrix [N, d] plus the leading shape."""
    if isinstance(X, torch.Tensor):
        X = X.detach().cpu()
        X = X.float() if X.dtype in (torch.float16, torch.bfloat16) else X
        X = X.numpy()
    X = np.asarray(X)
    if X.ndim < 2:
        raise ValueError(f"{name} must have shape [..., d] with at least 2 dimensions, got {X.shape}")
    if not np.issubdtype(X.dtype, np.number) or np.issubdtype(X.dtype, np.complexfloating):
        raise ValueError(f"{name} must be real-valued, got dtype {X.dtype}")
    lead = X.shape[:-1]
    X = X.reshape(-1, X.shape[-1])
    if X.shape[0] < 1 or X.shape[1] < 1:
        raise ValueError(f"{name} must be non-empty, got shape {X.shape}")
    if not np.issubdtype(X.dtype, np.floating):
        X = X.astype(np.float64)
    if not np.isfinite(X).all():
        raise ValueError(f"{name} contains NaN or inf")
    return X, lead


@contextlib.contextmanager
def _torch_threads_kept() -> Iterator[None]:
    """Restore torch's intra-op thread count on exit: UMAP's numba kernels set the OpenMP runtime that torch shares
    to every core (a caller's ``torch.set_num_threads(1)`` came back as 2 on a 2-core machine)."""
    threads = torch.get_num_threads()
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _check_n_components(n_components: int) -> None:
    if not isinstance(n_components, (int, np.integer)) or n_components < 1:
        raise ValueError(f"n_components must be a positive integer, got {n_components!r}")


class PCAEmbedder:
    """Principal components of states ``[N, d]``.

    ``svd_solver="auto"`` lets scikit-learn choose an exact SVD for small data and a randomized one for large
    data (``"full"`` / ``"randomized"`` force one). Learned attributes: ``mean_ [d]``,
    ``components_ [n_components, d]``, ``explained_variance_``, ``explained_variance_ratio_``,
    ``n_features_in_``.
    """

    def __init__(self, n_components: int = 2, *, svd_solver: str = "auto", random_state: int = 0):
        self.n_components = n_components
        self.svd_solver = svd_solver
        self.random_state = random_state

    def fit(self, X) -> PCAEmbedder:
        """Fit on ``X [..., d]``; returns self."""
        self._fit(_as_matrix(X)[0])
        return self

    def _fit(self, X: np.ndarray) -> np.ndarray:
        _check_n_components(self.n_components)
        if self.svd_solver not in _PCA_SOLVERS:
            raise ValueError(f"svd_solver must be one of {_PCA_SOLVERS}, got {self.svd_solver!r}")
        if self.n_components > min(X.shape):
            raise ValueError(f"n_components={self.n_components} must be <= min(n_samples, n_features) = "
                             f"{min(X.shape)}")
        self.pca_ = PCA(self.n_components, svd_solver=self.svd_solver, random_state=self.random_state)
        coords = self.pca_.fit_transform(X)
        self.mean_ = self.pca_.mean_
        self.components_ = self.pca_.components_
        self.explained_variance_ = self.pca_.explained_variance_
        self.explained_variance_ratio_ = self.pca_.explained_variance_ratio_
        self.n_features_in_ = X.shape[1]
        return coords

    def transform(self, X) -> np.ndarray:
        """Project ``X [..., d]`` to ``[..., n_components]``."""
        if not hasattr(self, "pca_"):
            raise ValueError("PCAEmbedder is not fitted: call fit first")
        X, lead = _as_matrix(X)
        if X.shape[1] != self.n_features_in_:
            raise ValueError(f"X has {X.shape[1]} features, the embedder was fitted on {self.n_features_in_}")
        return self.pca_.transform(X).reshape(*lead, self.n_components)

    def fit_transform(self, X) -> np.ndarray:
        """Fit on ``X [..., d]`` and return its coordinates ``[..., n_components]``."""
        X, lead = _as_matrix(X)
        return self._fit(X).reshape(*lead, self.n_components)


class UMAPEmbedder:
    """UMAP fitted on at most ``max_fit`` states (a seeded subsample); the rest are placed with ``transform``.

    High-dimensional states are first reduced to ``pca_components`` principal components (None: no PCA), which
    makes neighbour search on 80k-dimensional latents affordable. Learned attributes: ``umap_`` (the fitted
    ``umap.UMAP``), ``pca_`` (a :class:`PCAEmbedder` or None), ``fit_indices_`` (rows used for fitting),
    ``embedding_ [n_fit, n_components]``, ``n_features_in_``. The first fit pays numba's JIT (~10-20 s).
    """

    def __init__(
        self,
        n_components: int = 2,
        *,
        n_neighbors: int = 15,
        min_dist: float = 0.1,
        metric: str = "euclidean",
        max_fit: int = 5000,
        pca_components: int | None = 50,
        random_state: int = 0,
        **umap_kwargs,
    ):
        self.n_components = n_components
        self.n_neighbors = n_neighbors
        self.min_dist = min_dist
        self.metric = metric
        self.max_fit = max_fit
        self.pca_components = pca_components
        self.random_state = random_state
        self.umap_kwargs = umap_kwargs

    def _reduce(self, X: np.ndarray) -> np.ndarray:
        return X if self.pca_ is None else self.pca_.transform(X)

    def _place(self, X: np.ndarray) -> np.ndarray:
        """``X [N, d]`` placed in the fitted embedding, ``[N, n_components]``."""
        with _torch_threads_kept():
            return np.asarray(self.umap_.transform(self._reduce(X)))

    def _fit(self, X: np.ndarray) -> np.ndarray:
        _check_n_components(self.n_components)
        if not isinstance(self.max_fit, int) or self.max_fit < 2:
            raise ValueError(f"max_fit must be an integer >= 2, got {self.max_fit!r}")
        if X.shape[0] <= self.n_components + 1:
            raise ValueError(f"UMAP needs more than n_components + 1 = {self.n_components + 1} samples, "
                             f"got {X.shape[0]}")
        with warnings.catch_warnings():  # umap warns on import that its TensorFlow variant is unavailable
            warnings.filterwarnings("ignore", message=".*ParametricUMAP", category=ImportWarning)
            import umap  # optional and heavy (numba): imported on first use only

        rng = np.random.default_rng(self.random_state)
        n = X.shape[0]
        subsample = np.sort(rng.choice(n, self.max_fit, replace=False)) if n > self.max_fit else np.arange(n)
        self.fit_indices_ = subsample
        Xf = X[self.fit_indices_]
        self.pca_ = None
        if self.pca_components is not None and X.shape[1] > self.pca_components:
            k = min(self.pca_components, Xf.shape[0])
            self.pca_ = PCAEmbedder(k, random_state=self.random_state).fit(Xf)
        self.umap_ = umap.UMAP(
            n_components=self.n_components,
            n_neighbors=min(self.n_neighbors, Xf.shape[0] - 1),
            min_dist=self.min_dist,
            metric=self.metric,
            random_state=self.random_state,
            n_jobs=1,
            **self.umap_kwargs,
        )
        with _torch_threads_kept():
            self.embedding_ = self.umap_.fit_transform(self._reduce(Xf))
        self.n_features_in_ = X.shape[1]
        return self.embedding_

    def fit(self, X) -> UMAPEmbedder:
        """Fit on (a subsample of) ``X [..., d]``; returns self."""
        self._fit(_as_matrix(X)[0])
        return self

    def transform(self, X) -> np.ndarray:
        """Place ``X [..., d]`` in the fitted embedding: ``[..., n_components]``."""
        if not hasattr(self, "umap_"):
            raise ValueError("UMAPEmbedder is not fitted: call fit first")
        X, lead = _as_matrix(X)
        if X.shape[1] != self.n_features_in_:
            raise ValueError(f"X has {X.shape[1]} features, the embedder was fitted on {self.n_features_in_}")
        return self._place(X).reshape(*lead, self.n_components)

    def fit_transform(self, X) -> np.ndarray:
        """Fit on a subsample of ``X [..., d]``; fitted rows keep their embedding, others are transformed."""
        X, lead = _as_matrix(X)
        fitted = self._fit(X)
        out = np.empty((X.shape[0], self.n_components), dtype=fitted.dtype)
        out[self.fit_indices_] = fitted
        rest = np.setdiff1d(np.arange(X.shape[0]), self.fit_indices_)
        if rest.size:
            out[rest] = self._place(X[rest])
        return out.reshape(*lead, self.n_components)


_EMBEDDERS = {"pca": PCAEmbedder, "umap": UMAPEmbedder}


def embed(
    X, method: str = "pca", n_components: int = 2, **kwargs
) -> tuple[np.ndarray, PCAEmbedder | UMAPEmbedder]:
    """Embed states ``X [..., d]`` with ``method`` ``"pca"`` or ``"umap"``.

    Extra keyword arguments go to :class:`PCAEmbedder` / :class:`UMAPEmbedder`. Returns
    ``(coords [..., n_components], fitted embedder)``; reuse the embedder's ``transform`` to draw
    trajectories, fixed points and basin maps in the same coordinates.
    """
    if method not in _EMBEDDERS:
        raise ValueError(f"method must be one of {tuple(_EMBEDDERS)}, got {method!r}")
    embedder = _EMBEDDERS[method](n_components, **kwargs)
    return embedder.fit_transform(X), embedder
