"""Batched Orthogonal Matching Pursuit in torch (CPU, or GPU when given one).

Each row x of X is approximated as a sparse combination of at most k dictionary rows (atoms):
greedy selection of the atom most correlated with the residual, then a least-squares refit
over all selected atoms, kept as a Cholesky factor of the selected atoms' Gram matrix that
grows by one row per step.

Two paths:
- exact (`candidates=None`): every step correlates the residual with the whole dictionary
  (no n x n Gram matrix is formed). Same supports and coefficients as scikit-learn's
  `orthogonal_mp_gram` (tested).
- screened (`candidates=M`): each target first keeps its M atoms most correlated with it,
  then runs Gram-matrix Batch-OMP over those (each step costs M*t instead of n*d). The Gram
  entries come from one matrix over the union of all targets' candidates when that is
  smaller than one M x M matrix per target (real embeddings: targets keep mostly the same
  atoms), else from one M x M matrix per target by batched matmul. Exact whenever every atom exact OMP would pick is
  among the M (with a float32 solve the M are ranked in bfloat16 where that is fast, see `fast_bfloat16`); on real embeddings exact
  OMP's later atoms are spread over the whole dictionary, so screening changes the supports:
  `benchmarks/omp_kernel.py` measures by how much, `benchmarks/transplant_quality.py` what
  that does to the transplanted model.

Options beyond plain OMP: `ridge` adds lambda to the Gram diagonal of the refit (shrinks
coefficients of nearly collinear atoms); `normalize` selects by correlation / atom norm.
"""

from __future__ import annotations

import contextlib
import functools
import queue
from dataclasses import dataclass

import torch


@functools.cache
def _cpu_has_bf16() -> bool:
    try:  # Linux: the CPU's feature flags
        flags = open("/proc/cpuinfo").read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def fast_bfloat16(device: torch.device) -> bool:
    """Whether bfloat16 matrix products are faster than float32 on `device`: CUDA GPUs and
    CPUs with bf16 instructions (AVX512-BF16, AMX); not AVX2-only CPUs, where torch emulates them."""
    return device.type == "cuda" or (device.type == "cpu" and _cpu_has_bf16())


@contextlib.contextmanager
def _threads(n: int | None):
    """Run the block's torch ops on `n` intra-op threads (None: leave as is). The OMP steps
    are ~10 small tensor ops each; with several threads every op is a parallel region that
    waits for its slowest thread, which on a busy machine is one that got descheduled."""
    before = torch.get_num_threads()
    if n is not None and n != before:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


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
        dtype: torch.dtype = torch.float32, progress: bool = False, candidates: int | None = None,
        ridge: float = 0.0, normalize: bool = False, max_block_bytes: int = 2**30,
        exclude: torch.Tensor | None = None, step_threads: int | None = 1) -> OMPResult:
    """Batched OMP of `targets` (B, d) over the rows of `dictionary` (n, d), k atoms each.

    Work is done in blocks of `block_size` targets (memory ~ block_size * n floats for the
    correlations); `dtype` float64 gives bit-for-bit stable supports on hard cases. See the
    module docstring for `candidates`; with screening, blocks shrink so that one block's step
    memory (M * k per target, plus M * (M + d) without a shared Gram) stays under
    `max_block_bytes`, and the shared Gram is used only if it fits there too. `exclude` (B,)
    names one atom per target that it may not use (-1: none): leave-one-out fits of atoms
    against the rest of the dictionary. `step_threads` (screened, on CPU): intra-op threads per
    block, with blocks solved side by side in threads // step_threads worker threads (each
    holding one block's memory); screening and the shared Gram use every thread. None: one
    block at a time on every thread."""
    n, d = dictionary.shape
    if targets.ndim != 2 or targets.shape[1] != d:
        raise ValueError(f"targets must be (B, {d}), got {tuple(targets.shape)}")
    if not 1 <= k <= min(n, d):
        raise ValueError(f"k must be in 1..{min(n, d)} (atoms {n}, dimension {d}), got {k}")
    if candidates is not None and candidates < k:
        raise ValueError(f"candidates ({candidates}) must be at least k ({k})")
    if ridge < 0:
        raise ValueError(f"ridge must be >= 0, got {ridge}")
    if exclude is not None and exclude.shape != (targets.shape[0],):
        raise ValueError(f"exclude must be ({targets.shape[0]},), got {tuple(exclude.shape)}")
    D = dictionary.to(dtype)
    norms2 = (D * D).sum(1)
    screened = candidates is not None and candidates < n
    # screening only ranks atoms, so a float32 solve ranks them in bfloat16 where that is fast
    # (GPUs, CPUs with bf16 units: ~3x); on other CPUs (AVX2 only) bf16 matmuls are emulated
    # and ~9x slower than float32. The solve itself uses exact correlations of the kept atoms.
    D_screen = D.to(torch.bfloat16) if screened and dtype == torch.float32 and fast_bfloat16(D.device) else D
    union = None
    if screened:
        cand = _screen(D_screen, norms2, targets, candidates, normalize, exclude, block_size)
        union = _union_gram(D, cand, max_block_bytes)
        # per target: the candidates' Gram rows of the selected atoms (and the M x M Gram
        # matrices when there is no shared one); the screening scores are gone by now
        per_target = D.element_size() * candidates * (k + 4 + (0 if union else candidates + d))
        block_size = max(1, min(block_size, max_block_bytes // per_target))
    eps = torch.finfo(dtype).eps
    buffers: queue.SimpleQueue = queue.SimpleQueue()  # step memory, reused across blocks (pages faulted in once)

    def solve(start: int):
        X = targets[start : start + block_size].to(device=D.device, dtype=dtype)
        if screened:
            grams = _block_grams(D, X, cand[start : start + block_size], union)
            try:
                buffer = buffers.get_nowait()
            except queue.Empty:
                buffer = torch.empty(min(block_size, targets.shape[0]), k, candidates, dtype=dtype, device=D.device)
            idx, coef, n_sel = _omp_screened_block(grams, X, k, ridge, normalize, buffer)
            buffers.put(buffer)
        else:
            ex = None if exclude is None else exclude[start : start + block_size].to(D.device)
            idx, coef, n_sel = _omp_block(D, norms2, X, k, ridge, normalize, ex)  # its steps are big products
        recon = torch.einsum("bk,bkd->bd", coef, D[idx])
        return idx, coef, n_sel, (X - recon).norm(dim=1) / X.norm(dim=1).clamp(min=eps)

    # The screened steps are ~10 small tensor ops each; run with several intra-op threads, each
    # op is a parallel region that waits for its slowest thread, which on a busy machine is one
    # that got descheduled. So on CPU each block's steps run on `step_threads` threads, and
    # blocks run side by side in worker threads instead (torch releases the GIL inside ops): a
    # descheduled worker then delays only its own block.
    workers = 1
    if screened and D.device.type == "cpu" and step_threads is not None:
        workers = max(1, torch.get_num_threads() // step_threads)
        if workers > 1:  # at least two blocks per worker, so that none waits long for the last
            block_size = max(1, min(block_size, -(-targets.shape[0] // (2 * workers))))
    starts = range(0, targets.shape[0], block_size)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(desc="OMP", unit="block", total=len(starts))
    results = []
    with _threads(step_threads if screened and D.device.type == "cpu" else None):
        if workers > 1:
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(workers) as pool:
                for result in pool.map(solve, starts):
                    results.append(result)
                    if bar is not None:
                        bar.update()
        else:
            for start in starts:
                results.append(solve(start))
                if bar is not None:
                    bar.update()
    if bar is not None:
        bar.close()
    out_idx, out_coef, out_n, out_res = zip(*results)
    return OMPResult(torch.cat(out_idx), torch.cat(out_coef), torch.cat(out_n), torch.cat(out_res))


class _Factor:
    """Per-target inverse Cholesky factor Linv (L L^T = Gram of the selected atoms + ridge I)
    and the refit gamma = Linv^T Linv c, extended one atom at a time with batched matrix
    products only (no per-target triangular solves). Targets whose next atom is linearly
    dependent on their selection stop (their `active` flag drops)."""

    def __init__(self, B: int, k: int, like: torch.Tensor):
        self.Linv = torch.zeros(B, k, k, dtype=like.dtype, device=like.device)
        self.z = torch.zeros(B, k, dtype=like.dtype, device=like.device)  # Linv c
        self.gamma = torch.zeros(B, k, dtype=like.dtype, device=like.device)
        self.active = torch.ones(B, dtype=torch.bool, device=like.device)
        self.n_sel = torch.zeros(B, dtype=torch.long, device=like.device)
        self.eps = torch.finfo(like.dtype).eps

    def extend(self, t: int, g: torch.Tensor, diag: torch.Tensor, c_new: torch.Tensor) -> torch.Tensor | None:
        """Add atom t with Gram column `g` (B, t) against the selected atoms, squared norm
        `diag` (+ ridge) and correlation `c_new` with x; returns the rows that took it."""
        if t == 0:
            w = g.new_zeros(g.shape[0], 0)
            diag2 = diag
        else:
            w = torch.bmm(self.Linv[:, :t, :t], g.unsqueeze(-1)).squeeze(-1)  # L^-1 g
            diag2 = diag - (w * w).sum(1)
        self.active &= diag2 > self.eps * diag.abs().clamp(min=self.eps) * 8
        if not self.active.any():
            return None
        rows = self.active.nonzero().squeeze(1)
        sel = slice(None) if len(rows) == len(self.active) else rows  # all active: views, not gathers
        delta = diag2[sel].clamp(min=self.eps).sqrt()
        # new last row of L^-1: [-(w^T L^-1) / delta, 1 / delta]
        if t:
            self.Linv[sel, t, :t] = -torch.bmm(w[sel].unsqueeze(1), self.Linv[sel, :t, :t]).squeeze(1) / delta[:, None]
        self.Linv[sel, t, t] = 1.0 / delta
        zt = (c_new[sel] - (w[sel] * self.z[sel, :t]).sum(1)) / delta
        self.z[sel, t] = zt
        self.n_sel[sel] = t + 1
        Li = self.Linv[sel, : t + 1, : t + 1]
        self.gamma[sel, : t + 1] = torch.bmm(Li.transpose(1, 2), self.z[sel, : t + 1].unsqueeze(-1)).squeeze(-1)
        return rows


def _excluded(exclude: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(rows, atoms) of the targets that exclude an atom, or None."""
    if exclude is None:
        return None
    rows = (exclude >= 0).nonzero().squeeze(1)
    return (rows, exclude[rows]) if len(rows) else None


def _omp_block(D: torch.Tensor, norms2: torch.Tensor, X: torch.Tensor, k: int, ridge: float, normalize: bool,
               exclude: torch.Tensor | None = None):
    B = X.shape[0]
    idx = torch.zeros(B, k, dtype=torch.long, device=D.device)
    f = _Factor(B, k, D)
    scale = norms2.clamp(min=f.eps).rsqrt() if normalize else None
    residual = X.clone()
    taken = torch.zeros(B, D.shape[0], dtype=torch.bool, device=D.device)
    if (ex := _excluded(exclude)) is not None:
        taken[ex] = True
    for t in range(k):
        corr = (residual @ D.T).abs_()
        if scale is not None:
            corr *= scale
        corr.masked_fill_(taken, -1.0)
        j = corr.argmax(1)
        atom = D[j]
        g = torch.einsum("btd,bd->bt", D[idx[:, :t]], atom)
        sel = f.extend(t, g, norms2[j] + ridge, (atom * X).sum(1))
        if sel is None:
            break
        idx[sel, t] = j[sel]
        taken[sel, j[sel]] = True
        residual[sel] = X[sel] - torch.einsum("bt,btd->bd", f.gamma[sel, : t + 1], D[idx[sel, : t + 1]])
    return idx, f.gamma, f.n_sel


def _screen(D_screen: torch.Tensor, norms2: torch.Tensor, targets: torch.Tensor, M: int, normalize: bool,
            exclude: torch.Tensor | None, block_size: int) -> torch.Tensor:
    """(B, M) ids of each target's M atoms most correlated with it (by |corr|, or |corr| / norm
    with `normalize`); an excluded atom is never among them."""
    out = []
    for start in range(0, targets.shape[0], block_size):
        X = targets[start : start + block_size].to(device=D_screen.device, dtype=D_screen.dtype)
        score = (X @ D_screen.T).abs_()  # only used to rank atoms
        if normalize:
            score *= norms2.clamp(min=torch.finfo(norms2.dtype).eps).rsqrt().to(score.dtype)
        ex = None if exclude is None else exclude[start : start + block_size].to(D_screen.device)
        if (rows := _excluded(ex)) is not None:
            score[rows] = -1.0
        out.append(score.topk(M, dim=1).indices)
        del score
    return torch.cat(out)


@dataclass
class _Union:
    """The Gram matrix of every atom some target kept (`atoms`: sorted global ids)."""

    atoms: torch.Tensor  # (U,)
    rows: torch.Tensor  # (U, d): D[atoms]
    gram: torch.Tensor  # (U, U)


def _union_gram(D: torch.Tensor, cand: torch.Tensor, max_bytes: int) -> _Union | None:
    """One Gram matrix over the union of all targets' candidates, when that is cheaper than one
    M x M Gram per target and fits in `max_bytes`. Targets' candidates overlap heavily on real
    embeddings (light pair: 3,004 targets x 1,024 candidates come from 9,242 of 46,145 atoms),
    so U^2 is far below B * M^2 there; with many targets and few candidates (the heavy pair) it
    is not, and each target gets its own."""
    atoms = cand.unique()
    B, M = cand.shape
    U = len(atoms)
    if U * U * D.element_size() > max_bytes or U * U >= B * M * M:
        return None
    DU = D[atoms]
    return _Union(atoms, DU, DU @ DU.T)


@dataclass
class _Grams:
    """What the greedy steps need of a block's candidates: <candidate, x>, squared norms, and
    a way to fetch the Gram row (against all M candidates) of one chosen candidate per target."""

    cand: torch.Tensor  # (B, M) global atom ids
    alpha: torch.Tensor  # (B, M)
    diag: torch.Tensor  # (B, M)
    rows: callable  # (target rows: a tensor or slice(None), positions in cand) -> (len, M)


def _block_grams(D: torch.Tensor, X: torch.Tensor, cand: torch.Tensor, union: _Union | None) -> _Grams:
    # candidates in atom order (not by score): the union's Gram rows are then read left to
    # right (~3x faster gathers); the order only decides ties between equally correlated atoms
    cand = cand.to(D.device).sort(1).values
    if union is None:
        Dc = D[cand]  # (B, M, d)
        alpha = torch.bmm(Dc, X.unsqueeze(-1)).squeeze(-1)  # <candidate, x>
        G = torch.bmm(Dc, Dc.transpose(1, 2))  # (B, M, M) candidate Gram matrices
        del Dc
        def per_target_rows(r, j):
            return G[torch.arange(len(j), device=G.device) if isinstance(r, slice) else r, j]
        return _Grams(cand, alpha, G.diagonal(dim1=1, dim2=2).clone(), per_target_rows)
    local = torch.searchsorted(union.atoms, cand)  # candidates' positions in the union
    U = len(union.atoms)
    flat = union.gram.view(-1)
    alpha = (X @ union.rows.T).gather(1, local)
    diag = union.gram.diagonal()[local]

    def union_rows(r, j):
        loc = local if isinstance(r, slice) else local[r]
        at = torch.add(loc, loc.gather(1, j[:, None]) * U)  # flat positions of the chosen atoms' rows
        return flat.index_select(0, at.view(-1)).view(at.shape)
    return _Grams(cand, alpha, diag, union_rows)


def _omp_screened_block(grams: _Grams, X: torch.Tensor, k: int, ridge: float, normalize: bool,
                        buffer: torch.Tensor | None = None):
    """Batch-OMP over each target's candidates, in the Gram space only.

    With L the Cholesky factor of the selected atoms' Gram (+ ridge), it keeps Q = L^-1 G[A, :]
    (the selected atoms' Gram rows against all candidates, orthogonalised) and z = L^-1 c[A].
    Then the correlations with the residual are c - Q^T z, so each step subtracts z_t Q[t]; the
    new atom's column of Q is the w that extends L (no triangular solves or inverses per step);
    the coefficients come from one triangular solve L^T gamma = z at the end. Targets whose
    next atom is linearly dependent on their selection stop there; every step still runs on
    the whole block (a stopped target's updates are masked out, not gathered away)."""
    B = X.shape[0]
    M = grams.cand.shape[1]
    dev, dt = X.device, X.dtype
    eps = torch.finfo(dt).eps
    alpha, diagG = grams.alpha, grams.diag
    scale = diagG.clamp(min=eps).rsqrt() if normalize else None
    rows = torch.arange(B, device=dev)
    pos = torch.zeros(B, k, dtype=torch.long, device=dev)  # selected positions in `cand`
    # (`buffer`: memory kept across blocks, so its pages are not faulted in again per block)
    Q = buffer[:B] if buffer is not None else torch.empty(B, k, M, dtype=dt, device=dev)
    L = torch.zeros(B, k, k, dtype=dt, device=dev)
    z = torch.zeros(B, k, dtype=dt, device=dev)
    active = torch.ones(B, dtype=torch.bool, device=dev)
    n_sel = torch.zeros(B, dtype=torch.long, device=dev)
    corr = alpha.clone()  # = <candidate, residual>
    taken = torch.zeros(B, M, dtype=torch.bool, device=dev)
    for t in range(k):
        s = corr.abs()
        if scale is not None:
            s *= scale
        s.masked_fill_(taken, -1.0)
        j = s.argmax(1)
        w = Q[rows, :t, j]  # L^-1 G[A, j]
        diag = diagG[rows, j] + ridge
        d2 = diag - (w * w).sum(1)
        active &= d2 > eps * diag.abs().clamp(min=eps) * 8
        if not active.any():
            break
        delta = torch.where(active, d2.clamp(min=eps).sqrt(), 1.0)
        zt = torch.where(active, (alpha[rows, j] - (w * z[:, :t]).sum(1)) / delta, 0.0)
        q = grams.rows(slice(None), j)  # G[j, :]
        if t:
            q = torch.baddbmm(q[:, None], w[:, None], Q[:, :t], alpha=-1).squeeze(1)
        Q[:, t] = q / delta[:, None]
        corr.addcmul_(zt[:, None], Q[:, t], value=-1.0)
        L[:, t, :t], L[:, t, t], z[:, t] = w, delta, zt
        pos[active, t] = j[active]
        n_sel[active] = t + 1
        taken[rows, j] |= active
    # slots past a target's last atom: identity rows of L and zero z, so they solve to 0
    past = torch.arange(k, device=dev)[None, :] >= n_sel[:, None]
    L = torch.where(past[:, :, None], torch.eye(k, dtype=dt, device=dev), L)
    z = z.masked_fill(past, 0.0)
    gamma = torch.linalg.solve_triangular(L.transpose(1, 2), z[:, :, None], upper=True).squeeze(-1)
    return grams.cand.gather(1, pos), gamma, n_sel
