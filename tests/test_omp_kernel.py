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
    with pytest.raises(ValueError, match="candidates"):
        omp(torch.randn(10, 4), torch.randn(3, 4), k=3, candidates=2)


def test_screening_keeping_all_but_one_atom_is_exact():
    rng = np.random.default_rng(2)
    D, X = torch.from_numpy(rng.standard_normal((400, 32))), torch.from_numpy(rng.standard_normal((30, 32)))
    full = omp(D, X, 10, dtype=torch.float64)
    screened = omp(D, X, 10, dtype=torch.float64, candidates=399, block_size=7)
    assert torch.equal(full.indices, screened.indices)
    torch.testing.assert_close(full.coefs, screened.coefs, atol=1e-10, rtol=1e-9)


@pytest.mark.parametrize("n_atoms,n_targets,shared_gram", [(500, 12, False), (300, 200, True)])
def test_screening_is_exact_omp_over_each_targets_top_atoms(n_atoms, n_targets, shared_gram):
    """Reference: scikit-learn's OMP over the M atoms most correlated with each target, with
    one Gram matrix per target (few targets) and with one over the union of all targets'
    candidates (many targets whose candidates overlap)."""
    from tokensurgery.kernels.omp import _union_gram

    rng = np.random.default_rng(3)
    D, X = rng.standard_normal((n_atoms, 24)), rng.standard_normal((n_targets, 24))
    M, k = 40, 8
    top = np.argsort(-np.abs(X @ D.T), axis=1)[:, :M]
    assert (_union_gram(torch.from_numpy(D), torch.from_numpy(top), 2**30) is not None) == shared_gram
    got = omp(torch.from_numpy(D), torch.from_numpy(X), k, dtype=torch.float64, candidates=M, block_size=64)
    ours = dense(got, n_atoms)
    for b in range(len(X)):
        ref = np.zeros(n_atoms)
        ref[top[b]] = sklearn_reference(D[top[b]], X[b : b + 1], k)[0]
        assert set(np.flatnonzero(ours[b])) == set(np.flatnonzero(ref))
        np.testing.assert_allclose(ours[b], ref, atol=1e-9)


@pytest.mark.parametrize("candidates", [None, 60])
def test_ridge_solves_the_regularised_normal_equations(candidates):
    rng = np.random.default_rng(4)
    D, X = rng.standard_normal((200, 16)), rng.standard_normal((10, 16))
    lam = 0.5
    got = omp(torch.from_numpy(D), torch.from_numpy(X), 6, dtype=torch.float64, ridge=lam, candidates=candidates)
    for b in range(len(X)):
        S = got.indices[b].numpy()
        A = D[S]
        want = np.linalg.solve(A @ A.T + lam * np.eye(len(S)), A @ X[b])
        np.testing.assert_allclose(got.coefs[b].numpy(), want, atol=1e-9)


@pytest.mark.parametrize("candidates", [None, 149])
def test_normalized_selection_equals_omp_on_unit_atoms(candidates):
    rng = np.random.default_rng(5)
    D = rng.standard_normal((150, 20)) * rng.uniform(0.1, 3.0, (150, 1))  # very unequal atom norms
    X = rng.standard_normal((15, 20))
    norms = np.linalg.norm(D, axis=1)
    ref = sklearn_reference(D / norms[:, None], X, 7) / norms  # same fit, coefficients of the raw atoms
    got = omp(torch.from_numpy(D), torch.from_numpy(X), 7, dtype=torch.float64, normalize=True, candidates=candidates)
    ours = dense(got, 150)
    assert ((ours != 0) == (ref != 0)).all()
    np.testing.assert_allclose(ours, ref, atol=1e-9)


@pytest.mark.parametrize("candidates", [None, 40])
def test_exclude_equals_omp_without_that_atom(candidates):
    """Leave-one-out: excluding atom e for a target gives the coefficients scikit-learn finds
    over the dictionary with row e deleted (targets are near their own atom, so a fit that
    ignored `exclude` would pick it first and fail this)."""
    rng = np.random.default_rng(3)
    D = rng.standard_normal((200, 32))
    exclude = np.array([5, 17, -1, 120, 199, 0])
    X = D[np.maximum(exclude, 0)] * 3 + 0.1 * rng.standard_normal((6, 32))
    k = 6
    got = omp(torch.from_numpy(D), torch.from_numpy(X), k, dtype=torch.float64, candidates=candidates,
              exclude=torch.from_numpy(exclude))
    ours = dense(got, 200)
    for b, e in enumerate(exclude):
        keep = np.arange(200) if e < 0 else np.delete(np.arange(200), e)
        if candidates is not None:  # the screened kernel's candidates, from the kept atoms
            keep = keep[np.argsort(-np.abs(D[keep] @ X[b]), kind="stable")[:candidates]]
        ref = np.zeros(200)
        ref[keep] = sklearn_reference(D[keep], X[b : b + 1], k)[0]
        if e >= 0:
            assert ours[b, e] == 0
        np.testing.assert_allclose(ours[b], ref, atol=1e-9)


def test_worker_threads_give_the_sequential_result():
    """Screened blocks solved side by side in worker threads (step_threads=1 on 2 threads) give
    what one block after another gives."""
    rng = np.random.default_rng(7)
    D, X = torch.from_numpy(rng.standard_normal((300, 24))), torch.from_numpy(rng.standard_normal((101, 24)))
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        pooled = omp(D, X, 8, dtype=torch.float64, candidates=40, step_threads=1)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    sequential = omp(D, X, 8, dtype=torch.float64, candidates=40, step_threads=None, block_size=7)
    assert torch.equal(pooled.indices, sequential.indices)
    torch.testing.assert_close(pooled.coefs, sequential.coefs, atol=1e-10, rtol=1e-9)
    torch.testing.assert_close(pooled.residual_norm, sequential.residual_norm, atol=1e-10, rtol=1e-9)
