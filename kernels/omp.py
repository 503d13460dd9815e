"""Batched Orthogonal Matching Pursuit in torch (CPU, or GPU when given one).

Each row x of X is approximated as a sparse combination of at most k dictionary rows (atoms):
greedy selection of the atom most correlated with the residual, then a least-squares refit
over all selected atoms. The refit keeps a Cholesky factor of the selected atoms' Gram matrix
per target and extends it by one row per step (no n x n Gram matrix is ever formed, so a
50k-atom dictionary costs only its own memory). Exact: same supports and coefficients as
scikit-learn's `orthogonal_mp_gram` (tested).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class OMPResult:
    """`indices[b, :n[b]]` are the atoms chosen for target b, in selection order, and
    `coefs[b, :n[b]]` their weights; slots past `n[b]` hold index 0 and weight 0."""

    indices: torch.Tensor  # (B, k) long
    coefs: torch.Tensor  # (B, k)
    n_selected: torch.Tensor  # (B,) long: < k only when the atoms became linearly dependent
    residual_norm: torch.Tensor  # (B,) ||x - coefs @ D[indices]|| / ||x||

    def reconstruct(self, atoms: torch.Tensor) -> torch.Tensor:
        """Apply the coefficients to (another space's copy of) the atoms: sum_j c_j atoms[i_j]."""
        return torch.einsum("bk,bkd->bd", self.coefs.to(atoms.dtype), atoms[self.indices])


def omp(dictionary: torch.Tensor, targets: torch.Tensor, k: int, block_size: int = 1024,
        dtype: torch.dtype = torch.float32, progress: bool = False) -> OMPResult:
    """Batched OMP of `targets` (B, d) over the rows of `dictionary` (n, d), k atoms each.

    Work is done in blocks of `block_size` targets (memory ~ block_size * n floats for the
    correlations); `dtype` float64 gives bit-for-bit stable supports on hard cases."""
    n, d = dictionary.shape
    if targets.ndim != 2 or targets.shape[1] != d:
        raise ValueError(f"targets must be (B, {d}), got {tuple(targets.shape)}")
    if not 1 <= k <= min(n, d):
        raise ValueError(f"k must be in 1..{min(n, d)} (atoms {n}, dimension {d}), got {k}")
    D = dictionary.to(dtype)
    out_idx, out_coef, out_n, out_res = [], [], [], []
    blocks = range(0, targets.shape[0], block_size)
    if progress:
        from tqdm.auto import tqdm

        blocks = tqdm(blocks, desc="OMP", unit="block")
    for start in blocks:
        X = targets[start : start + block_size].to(device=D.device, dtype=dtype)
        idx, coef, n_sel, res = _omp_block(D, X, k)
        out_idx.append(idx), out_coef.append(coef), out_n.append(n_sel), out_res.append(res)
    return OMPResult(torch.cat(out_idx), torch.cat(out_coef), torch.cat(out_n), torch.cat(out_res))


def _omp_block(D: torch.Tensor, X: torch.Tensor, k: int):
    B, d = X.shape
    eps = torch.finfo(D.dtype).eps
    norms2 = (D * D).sum(1)  # (n,)
    idx = torch.zeros(B, k, dtype=torch.long, device=D.device)
    L = torch.zeros(B, k, k, dtype=D.dtype, device=D.device)  # Cholesky of Gram(selected)
    c = torch.zeros(B, k, dtype=D.dtype, device=D.device)  # D_S x
    gamma = torch.zeros(B, k, dtype=D.dtype, device=D.device)
    active = torch.ones(B, dtype=torch.bool, device=D.device)
    n_sel = torch.zeros(B, dtype=torch.long, device=D.device)
    residual = X.clone()
    taken = torch.zeros(B, D.shape[0], dtype=torch.bool, device=D.device)
    for t in range(k):
        corr = (residual @ D.T).abs_()
        corr.masked_fill_(taken, -1.0)
        j = corr.argmax(1)  # (B,)
        atom = D[j]  # (B, d)
        if t == 0:
            diag2 = norms2[j]
            w = torch.zeros(B, 0, dtype=D.dtype, device=D.device)
        else:
            g = torch.einsum("btd,bd->bt", D[idx[:, :t]], atom)  # Gram column of the new atom
            w = torch.linalg.solve_triangular(L[:, :t, :t], g.unsqueeze(-1), upper=False).squeeze(-1)
            diag2 = norms2[j] - (w * w).sum(1)
        ok = active & (diag2 > eps * norms2[j].clamp(min=eps))  # linear dependence ends a target
        active = ok
        if not active.any():
            break
        # extend the factor / support only where still active
        sel = active.nonzero().squeeze(1)
        idx[sel, t] = j[sel]
        taken[sel, j[sel]] = True
        L[sel, t, :t] = w[sel]
        L[sel, t, t] = diag2[sel].sqrt()
        c[sel, t] = (atom[sel] * X[sel]).sum(1)
        n_sel[sel] = t + 1
        # refit: L L^T gamma = c over the t+1 selected atoms
        Ls = L[sel, : t + 1, : t + 1]
        z = torch.linalg.solve_triangular(Ls, c[sel, : t + 1].unsqueeze(-1), upper=False)
        g_sel = torch.linalg.solve_triangular(Ls.transpose(1, 2), z, upper=True).squeeze(-1)
        gamma[sel, : t + 1] = g_sel
        residual[sel] = X[sel] - torch.einsum("bt,btd->bd", g_sel, D[idx[sel, : t + 1]])
    res = residual.norm(dim=1) / X.norm(dim=1).clamp(min=eps)
    return idx, gamma, n_sel, res
