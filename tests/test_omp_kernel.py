"""The batched OMP kernel against scikit-learn's orthogonal_mp_gram (same supports, same
coefficients) on random data and on real embedding rows."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.linear_model import orthogonal_mp_gram

from tokensurgery.kernels.omp import omp


def sklearn_reference(D: np.ndarray, X: np.ndarray, k: int) -> np.ndarray:
    """Coefficient matrix (B, n) from scikit-learn; its dictionary has atoms as columns."""
    gram = D @ D.T
    xy = D @ X.T
    coef = orthogonal_mp_gram(gram, xy, n_nonzero_coefs=k)
    return np.atleast_2d(coef.T)


def dense(result, n: int) -> np.ndarray:
    out = torch.zeros(result.indices.shape[0], n, dtype=torch.float64)
    out.scatter_add_(1, result.indices, result.coefs.double())
    return out.numpy()


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-9), (torch.float32, 2e-3)])
def test_matches_sklearn_on_random_data(dtype, tol):
    rng = np.random.default_rng(0)
    D = rng.standard_normal((300, 48))
    X = rng.standard_normal((40, 48))
    k = 12
    ref = sklearn_reference(D, X, k)
    got = omp(torch.from_numpy(D), torch.from_numpy(X), k, block_size=16, dtype=dtype)
    assert (got.n_selected == k).all()
    ours = dense(got, 300)
    assert ((ours != 0) == (ref != 0)).all()  # same supports
    np.testing.assert_allclose(ours, ref, atol=tol, rtol=tol)


def test_matches_sklearn_on_real_embeddings(smollm2_dir):
    """Atoms = real SmolLM2 embedding rows (correlated, non-unit norm); targets = other rows."""
    from tokensurgery.checkpoint import load_embeddings

    E = load_embeddings(smollm2_dir).input.double()
    g = torch.Generator().manual_seed(0)
    perm = torch.randperm(E.shape[0], generator=g)
    D, X = E[perm[:2000]], E[perm[2000:2064]]
    k = 32
    ref = sklearn_reference(D.numpy(), X.numpy(), k)
    got = omp(D, X, k, dtype=torch.float64)
    ours = dense(got, D.shape[0])
    assert ((ours != 0) == (ref != 0)).all()
    np.testing.assert_allclose(ours, ref, atol=1e-8, rtol=1e-6)
    recon = got.reconstruct(D)
    np.testing.assert_allclose((X - recon).norm(dim=1) / X.norm(dim=1), got.residual_norm, rtol=1e-6)


def test_exact_reconstruction_of_sparse_targets():
    rng = np.random.default_rng(1)
    D = torch.from_numpy(rng.standard_normal((100, 40)))
    true = torch.zeros(5, 100, dtype=torch.float64)
    for b in range(5):
        true[b, rng.choice(100, 3, replace=False)] = torch.from_numpy(rng.uniform(1, 2, 3))
    got = omp(D, true @ D, k=3, dtype=torch.float64)
    np.testing.assert_allclose(dense(got, 100), true.numpy(), atol=1e-9)
    assert (got.residual_norm < 1e-9).all()


def test_linear_dependence_stops_early():
    D = torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    got = omp(D, torch.tensor([[3.0, 0.0]], dtype=torch.float64), k=2, dtype=torch.float64)
    assert got.n_selected.item() == 1 and got.residual_norm.item() < 1e-12


def test_bad_arguments():
    with pytest.raises(ValueError, match="k must be"):
        omp(torch.randn(10, 4), torch.randn(3, 4), k=5)
    with pytest.raises(ValueError, match="targets must be"):
        omp(torch.randn(10, 4), torch.randn(3, 5), k=2)
