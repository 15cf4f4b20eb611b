"""PCA / UMAP embedders: estimator behaviour, exact principal axes, subsample-fit-then-transform logic.

The subsample-fit-then-transform logic is tested against a stand-in ``umap`` module (fast, exact calls), and
the real UMAP once end to end (numba's JIT takes ~30 s the first time).
"""

import subprocess
import sys
import types

import numpy as np
import pytest
import torch

from attractorlab.dynamics import PCAEmbedder, UMAPEmbedder, embed


def rotated_gaussian(n=500, seed=0):
    """Data with standard deviations 5, 2, 0.5, 0.1 along the columns of a random rotation Q."""
    rng = np.random.default_rng(seed)
    Q = np.linalg.qr(rng.normal(size=(4, 4)))[0]
    X = rng.normal(size=(n, 4)) * np.array([5.0, 2.0, 0.5, 0.1]) @ Q.T + np.array([1.0, -2.0, 3.0, 0.0])
    return X, Q


def test_pca_recovers_principal_axes_and_reshapes():
    X, Q = rotated_gaussian()
    coords, pca = embed(X, "pca", n_components=2)
    assert isinstance(pca, PCAEmbedder) and coords.shape == (500, 2)
    np.testing.assert_allclose(np.abs(pca.components_ @ Q[:, :2]), np.eye(2), atol=0.02)
    assert pca.explained_variance_ratio_[0] > pca.explained_variance_ratio_[1] > 0.1
    assert pca.n_features_in_ == 4 and pca.mean_.shape == (4,)
    batched = pca.transform(torch.tensor(X.reshape(5, 100, 4)))
    np.testing.assert_allclose(batched.reshape(500, 2), coords, atol=1e-10)
    np.testing.assert_allclose(PCAEmbedder(2, svd_solver="randomized").fit_transform(X)[:, 0] ** 2,
                               coords[:, 0] ** 2, rtol=1e-6)


def test_pca_bad_input():
    X, _ = rotated_gaussian(50)
    with pytest.raises(ValueError):
        PCAEmbedder().fit(X[:, 0])
    with pytest.raises(ValueError):
        PCAEmbedder().fit(np.where(np.arange(4) == 0, np.nan, X))
    with pytest.raises(ValueError):
        PCAEmbedder(5).fit(X)
    with pytest.raises(ValueError):
        PCAEmbedder().transform(X)
    with pytest.raises(ValueError):
        PCAEmbedder().fit(X).transform(X[:, :3])
    with pytest.raises(ValueError):
        PCAEmbedder(svd_solver="magic").fit(X)
    with pytest.raises(ValueError):
        embed(X, "tsne")


class _FakeUMAP:
    """Stand-in for umap.UMAP: 'embeds' by keeping the first n_components input columns."""

    instances: list = []

    def __init__(self, n_components=2, **kwargs):
        self.n_components, self.kwargs = n_components, kwargs
        _FakeUMAP.instances.append(self)

    def fit_transform(self, X):
        self.fit_shape = X.shape
        return X[:, : self.n_components] * 1.0

    def transform(self, X):
        return X[:, : self.n_components] * 1.0


@pytest.fixture
def fake_umap(monkeypatch):
    _FakeUMAP.instances = []
    monkeypatch.setitem(sys.modules, "umap", types.SimpleNamespace(UMAP=_FakeUMAP))
    return _FakeUMAP


def test_umap_fits_a_subsample_and_transforms_the_rest(fake_umap):
    X, _ = rotated_gaussian(300)
    emb = UMAPEmbedder(n_components=2, max_fit=100, pca_components=3, random_state=0)
    coords = emb.fit_transform(torch.tensor(X).reshape(3, 100, 4))
    assert coords.shape == (3, 100, 2)
    assert emb.fit_indices_.shape == (100,) and len(set(emb.fit_indices_.tolist())) == 100
    model = fake_umap.instances[-1]
    assert model.fit_shape == (100, 3) and model.kwargs["random_state"] == 0 and model.kwargs["n_jobs"] == 1
    np.testing.assert_allclose(coords.reshape(300, 2), emb.pca_.transform(X)[:, :2], atol=1e-10)
    np.testing.assert_allclose(emb.embedding_, coords.reshape(300, 2)[emb.fit_indices_])
    np.testing.assert_allclose(emb.transform(X[:7]), coords.reshape(300, 2)[:7], atol=1e-10)
    again = UMAPEmbedder(max_fit=100, pca_components=3, random_state=0).fit(X)
    assert np.array_equal(again.fit_indices_, emb.fit_indices_)
    coords2, emb2 = embed(X[:50], "umap", pca_components=None)
    assert emb2.pca_ is None and coords2.shape == (50, 2)


def test_umap_bad_input(fake_umap):
    with pytest.raises(ValueError):
        UMAPEmbedder().transform(np.zeros((5, 3)))
    with pytest.raises(ValueError):
        UMAPEmbedder().fit(np.zeros((3, 4)))
    with pytest.raises(ValueError):
        UMAPEmbedder(max_fit=1).fit(np.zeros((30, 4)))


def test_importing_dynamics_does_not_import_umap_or_the_model():
    code = ("import sys, attractorlab.dynamics, attractorlab.probing; "
            "print(sorted(m for m in ('umap', 'numba', 'h5py', 'attractorlab.model') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_real_umap_separates_two_clusters():
    rng = np.random.default_rng(0)
    X = np.concatenate([rng.normal(0, 1, (150, 20)), rng.normal(8, 1, (150, 20))])
    torch.set_num_threads(1)
    coords, _ = embed(X, "umap", max_fit=200, random_state=0)  # 100 rows placed by transform
    assert torch.get_num_threads() == 1  # numba's kernels leave torch's thread count as the caller set it
    a, b = coords[:150], coords[150:]
    gap = np.linalg.norm(a.mean(0) - b.mean(0))
    assert gap > 3 * max(a.std(0).max(), b.std(0).max())
