"""Tokenizer transplantation: give BASE the DONOR's tokenizer and token ids, no training.

Every donor id gets a row in the new embedding matrices:
- *shared* tokens (same surface bytes) and *specials* (matched by role, then content) copy
  BASE's row exactly;
- every other donor row (new text tokens, new specials, unused placeholders, padding rows)
  is *filled* by the chosen method:
  - `omp`: write the donor's embedding of the token as a sparse combination of the donor's
    embeddings of shared tokens (Orthogonal Matching Pursuit, k atoms), then apply the same
    coefficients to BASE's rows of those shared tokens (Goddard & Fernandes Neto, 2025),
    then, by default, blend each row with its `fvt` row, the weight per token class fit by
    leave-one-out on shared tokens, within a class a line in the token's own OMP error
    (`blend.py`; fragments and unshared scripts get FVT, except
    fragments that start a 4-byte character, which keep the plain OMP row, and classes whose
    weight is 0 are not solved at all);
  - `knn`: the k shared tokens nearest in the donor space, weighted by inverse distance;
  - `fvt`: the mean of BASE's rows for the pieces BASE's tokenizer splits the token into;
  - `mean`: the mean BASE row; `zero`: zeros;
  - methods registered by plugins (`plugins.py`), e.g. `hypernet`: rows predicted by a
    trained hypernetwork for BASE (`hypernets/`); they need no donor weights.
Input and output matrices get their own solve when BASE is untied (from the donor's own
output matrix when it has one); a tied BASE is solved once.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from .blend import blend, class_weights, describe, fit_weights, sample_shared, token_weights
from .checkpoint import Embeddings, NewEmbeddings, check_embeddings_cover, load_embeddings, write_patched_checkpoint
from .errors import TokenSurgeryError
from .inputs import TokenizerInput, open_model, open_tokenizer, vocabulary_of_folder
from .kernels.omp import omp
from .model_card import model_card
from .output_tokenizer import tokenizer_for_output
from .plugins import BUILTIN_METHODS, FILL_METHODS, transplant_methods
from .progress import Phases, bar
from .vocab_map import VocabMap

NEEDS_DONOR_EMBEDDINGS = ("omp", "knn")
METHODS = BUILTIN_METHODS  # plus plugin methods: `plugins.transplant_methods()`


@dataclass
class TransplantOptions:
    """How the filled rows are computed (see the module docstring for the methods)."""

    method: str = "omp"
    k: int = 64
    candidates: int | str | None = "auto"  # OMP screening: atoms kept per token ("auto", a number, None: exact)
    ridge: float = 0.1  # added to the OMP refit's Gram diagonal, relative to the mean atom norm^2
    normalize: bool = False  # OMP: select atoms by correlation / norm
    fvt_above: float | None = None  # OMP: text tokens reconstructed worse than this relative error get FVT
    affine: bool = True  # OMP: the coefficients' shortfall from a sum of 1 is filled with BASE's mean row
    blend: bool = True  # OMP: mix each new row with its FVT row, weight per token class fit by leave-one-out (blend.py)
    blend_error: bool = True  # blend: a token's weight is a line in its OMP error (per class), not the class's constant
    dtype: str = "float32"  # precision of the solve (the output keeps BASE's dtype)
    device: str = "cpu"
    block_size: int = 1024
    hypernet: str | None = None  # folder of a trained hypernetwork (the `hypernet` plugin method)

    def check(self) -> None:
        if self.method not in transplant_methods():
            raise TokenSurgeryError(f"unknown method {self.method!r}; choose one of {', '.join(transplant_methods())}")
        if self.method in FILL_METHODS and FILL_METHODS[self.method].check:
            FILL_METHODS[self.method].check(self)
        if self.k < 1:
            raise TokenSurgeryError(f"k must be at least 1, got {self.k}")
        if self.dtype not in ("float32", "float64"):
            raise TokenSurgeryError(f"dtype must be float32 or float64, got {self.dtype!r}")
        if isinstance(self.candidates, str) and self.candidates != "auto":
            raise TokenSurgeryError(f"candidates must be a number, 'auto' or None (exact), got {self.candidates!r}")
        if isinstance(self.candidates, int) and self.candidates < self.k:
            raise TokenSurgeryError(f"--candidates ({self.candidates}) must be at least k ({self.k})")


@dataclass
class TransplantResult:
    """What `transplant` did: the map, the method, per-token reconstruction errors (OMP)."""

    base: str
    donor: str
    out: Path
    vocab_map: VocabMap
    options: TransplantOptions
    n_rows: int
    filled: list[int]  # donor ids whose rows the method computed
    errors: torch.Tensor | None  # relative donor-space reconstruction error per solved row (omp)
    fvt_fallbacks: int = 0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    capped: int = 0  # computed rows scaled down to BASE's largest row norm
    blend_weights: dict[str, dict[str, float]] = field(default_factory=dict)  # matrix -> class -> OMP weight
    blend_lines: dict[str, dict[str, tuple[float, float]]] = field(default_factory=dict)  # matrix -> class -> (a, b)
    phases: Phases = field(default_factory=Phases)  # wall-clock seconds per step of the job

    def summary(self) -> dict:
        vm = self.vocab_map
        out = {"rows": self.n_rows, "shared": len(vm.shared), "specials": len(vm.specials), "filled": len(self.filled),
               "new_text": len(vm.new_text), "method": self.options.method, "seconds": round(self.seconds, 1),
               "phases": dict(self.phases.seconds)}
        if self.errors is not None and len(self.errors):
            q = torch.tensor([0.1, 0.5, 0.9]).to(self.errors.dtype)
            out["rel_error_p10_p50_p90"] = [round(v, 4) for v in self.errors.quantile(q).tolist()]
            out["rel_error_mean"] = round(self.errors.mean().item(), 4)
        return out


# ---- the fill methods ---------------------------------------------------------------------

# screening cost grows with tokens x candidates^2; "auto" keeps it near the heavy pair's
# (216k tokens x 128^2), so a few thousand new tokens get 1024 candidates
AUTO_BUDGET = 216_000 * 128**2


def resolve_candidates(candidates: int | str | None, k: int, n_tokens: int, n_atoms: int) -> int | None:
    """The number of screening candidates actually used (None: exact OMP)."""
    if candidates == "auto":
        m = 128
        while m < 1024 and n_tokens * (2 * m) ** 2 <= AUTO_BUDGET:
            m *= 2
        candidates = max(m, 2 * k)
    return None if candidates is None or candidates >= n_atoms else int(candidates)


def _solve_omp(dictionary: torch.Tensor, targets: torch.Tensor, opts: TransplantOptions, progress: bool,
               exclude: torch.Tensor | None = None):
    dt = getattr(torch, opts.dtype)
    D = dictionary.to(opts.device, dt)
    ridge = opts.ridge * (D * D).sum(1).mean().item()
    return omp(D, targets.to(dt), opts.k, block_size=opts.block_size, dtype=dt, progress=progress,
               candidates=opts.candidates, ridge=ridge, normalize=opts.normalize, exclude=exclude)


def _knn(dictionary: torch.Tensor, targets: torch.Tensor, k: int, block_size: int, progress: bool):
    """Indices and inverse-distance weights (summing to 1) of the k nearest atoms."""
    D = dictionary.float()
    d2 = (D * D).sum(1)
    idx, wts = [], []
    for s in bar(range(0, len(targets), block_size), "k nearest", total=-(-len(targets) // block_size), enabled=progress):
        X = targets[s : s + block_size].float()
        dist2 = (X * X).sum(1, keepdim=True) - 2 * X @ D.T + d2
        top = dist2.topk(k, dim=1, largest=False)
        w = 1.0 / (top.values.clamp(min=0).sqrt() + 1e-6)
        idx.append(top.indices), wts.append(w / w.sum(1, keepdim=True))
    return torch.cat(idx), torch.cat(wts)


def _fvt_rows(vm: VocabMap, ids: list[int], base: torch.Tensor, mean: torch.Tensor, progress: bool,
              block: int = 16384) -> torch.Tensor:
    """Mean of BASE's rows of each token's pieces (BASE's mean row when it has none).
    Summed by `index_add_` over blocks of tokens, not one small tensor op per token (the
    heavy pair's 216k rows, beside a busy process: "fill rows" 85 s -> 38 s)."""
    out = mean.expand(len(ids), -1).clone()
    text = set(vm.new_text)
    flat: list[int] = []
    owner: list[int] = []
    for r, t in enumerate(bar(ids, "FVT pieces", total=len(ids), enabled=progress)):
        if t in text:
            pieces = [p for p in vm.decompose(t) if p < base.shape[0]]
            flat += pieces
            owner += [r] * len(pieces)
    flat_t, owner_t = torch.tensor(flat, dtype=torch.long), torch.tensor(owner, dtype=torch.long)
    counts = torch.bincount(owner_t, minlength=len(ids))
    starts = torch.cat([torch.zeros(1, dtype=torch.long), counts.cumsum(0)])
    for lo in range(0, len(ids), block):  # a block's gathered pieces stay small
        hi = min(lo + block, len(ids))
        a, b = int(starts[lo]), int(starts[hi])
        if a == b:
            continue
        sums = torch.zeros(hi - lo, base.shape[1], dtype=base.dtype)
        sums.index_add_(0, owner_t[a:b] - lo, base[flat_t[a:b]])
        has = counts[lo:hi] > 0
        out[lo:hi][has] = sums[has] / counts[lo:hi][has].unsqueeze(1).to(base.dtype)
    return out


@dataclass
class _Solution:
    """Sparse weights over the dictionary for every filled row, found in one donor space."""

    indices: torch.Tensor  # (B, k) positions in the dictionary
    weights: torch.Tensor  # (B, k)
    errors: torch.Tensor | None  # relative reconstruction error in the donor space (omp)


def _solve(donor: torch.Tensor, filled: list[int], plan: dict, opts: TransplantOptions, progress: bool) -> _Solution:
    D, X = donor[torch.tensor(plan["dict_donor"])].float(), donor[torch.tensor(filled)].float()
    if opts.method == "knn":
        idx, w = _knn(D, X, opts.k, opts.block_size, progress)
        return _Solution(idx, w, None)
    res = _solve_omp(D, X, opts, progress)
    return _Solution(res.indices.cpu(), res.coefs.float().cpu(), res.residual_norm.float().cpu())


def _combine(weights: torch.Tensor, indices: torch.Tensor, atoms: torch.Tensor, mean: torch.Tensor,
             affine: bool | torch.Tensor) -> torch.Tensor:
    """Rows `sum_j weights[:, j] * atoms[indices[:, j]]`; with `affine`, plus `(1 - sum_j weights) * mean`
    (`affine` may be one bool per row).

    Why `affine`: a row's value in a dimension where every BASE row is nearly the same (Gemma-3's
    dimension 507: 0.145 +- 0.013) acts as a bias in a tied output matrix, and hidden states can
    be huge there (|h_507| ~ 190 on Hindi text read through SmolLM2's tokens). An OMP row whose
    coefficients sum to 0.75 has three quarters of the bias and outscores every BASE token in
    such contexts by several nats. Filling the shortfall with the mean row keeps those dimensions
    at BASE's value whatever the coefficients sum to."""
    rows = torch.einsum("bk,bkd->bd", weights, atoms[indices])
    if isinstance(affine, torch.Tensor):
        rows += (1 - weights.sum(1, keepdim=True)) * affine[:, None].float() * mean
    elif affine:
        rows += (1 - weights.sum(1, keepdim=True)) * mean
    return rows


def _fit_blend(base: torch.Tensor, donor: torch.Tensor, plan: dict, vm: VocabMap, opts: TransplantOptions
               ) -> tuple[dict[str, float], dict[str, tuple[float, float]]]:
    """OMP weight per token class and its line in the OMP error (blend.py): OMP rows of sampled
    shared tokens, each solved without its own atom, against their FVT rows and BASE's true rows."""
    position = {t: i for i, t in enumerate(plan["dict_donor"])}
    D = donor[torch.tensor(plan["dict_donor"])].float()
    atoms = base.float()[torch.tensor(plan["dict_base"])]
    mean = atoms.mean(0)

    def loo_rows(ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:  # rows, relative errors
        res = _solve_omp(D, donor[torch.tensor(ids)].float(), opts, False, torch.tensor([position[t] for t in ids]))
        return _combine(res.coefs.float().cpu(), res.indices.cpu(), atoms, mean, opts.affine), res.residual_norm.cpu()
    # BASE's tokenizer (the FVT pieces need it) loads during the solve's long matrix products,
    # which release the GIL (~1.5 s for Gemma-3's; the load itself holds the GIL)
    threading.Thread(target=_load_tokenizer, args=(vm.source,), daemon=True).start()
    return fit_weights(base, vm, loo_rows, sample_shared(vm))


def _load_tokenizer(vocab) -> None:
    """Read a vocabulary's tokenizer now; a failure is reported where it is used."""
    try:
        vocab._hf
    except TokenSurgeryError:
        pass


def _fill(base: torch.Tensor, solution: _Solution | None, vm: VocabMap, filled: list[int], opts: TransplantOptions,
          plan: dict, progress: bool, own: torch.Tensor | None = None) -> tuple[torch.Tensor, int]:
    """Rows for the `filled` donor ids in BASE's space (and how many fell back to FVT); `own`
    marks OMP rows kept without the mean fill (`blend.OWN_ROWS`)."""
    base = base.float()
    text_rows = sorted(set(vm.shared.values()))
    mean = base[text_rows].mean(0) if text_rows else base.mean(0)
    if opts.method == "zero":
        return torch.zeros(len(filled), base.shape[1]), 0
    if opts.method == "mean":
        return mean.expand(len(filled), -1).clone(), 0
    if opts.method == "fvt":
        return _fvt_rows(vm, filled, base, mean, progress), 0
    atoms = base[torch.tensor(plan["dict_base"])]
    rows = torch.empty(len(filled), base.shape[1])
    affine = torch.full((len(filled),), opts.affine and opts.method == "omp")
    if own is not None:
        affine &= ~own
    for s in range(0, len(filled), 8192):  # blocks: the gathered atoms of 200k tokens would not fit
        rows[s : s + 8192] = _combine(solution.weights[s : s + 8192], solution.indices[s : s + 8192], atoms, mean,
                                      affine[s : s + 8192])
    n_fvt = 0
    if opts.fvt_above is not None and solution.errors is not None:
        text = set(vm.new_text)
        bad = [i for i in (solution.errors > opts.fvt_above).nonzero().squeeze(1).tolist() if filled[i] in text]
        if bad:
            rows[bad] = _fvt_rows(vm, [filled[i] for i in bad], base, mean, False)
            n_fvt = len(bad)
    return rows, n_fvt


# ---- the transplant -----------------------------------------------------------------------

def prepare(base: str, donor: str, progress: bool = True, phases: Phases | None = None
            ) -> tuple[Path, TokenizerInput, VocabMap]:
    """Open both inputs and map the donor's vocabulary onto BASE's: (base folder, donor, map).
    The caller closes the donor (`TokenizerInput.close`) when done with its files."""
    phases = phases or Phases()
    with phases("open inputs"):
        base_dir = open_model(base, progress=progress)
        donor_ = open_tokenizer(donor, progress=progress)
    with phases("map vocabularies", "mapping vocabularies", progress):
        base_vocab = vocabulary_of_folder(base_dir, name=str(base))
        vm = VocabMap.build(base_vocab, donor_.vocab)
    if not vm.shared:
        donor_.close()
        raise TokenSurgeryError(f"{base} and {donor} share no text tokens; a transplant needs a shared dictionary "
                                "(use the hypernetwork for unrelated tokenizers)")
    return base_dir, donor_, vm


@dataclass
class Transplanted:
    """New embedding matrices for the donor's ids, and how they were made."""

    embeddings: NewEmbeddings
    filled: list[int]
    errors: torch.Tensor | None
    fvt_fallbacks: int
    capped: int = 0  # input rows scaled down to BASE's largest row norm
    options: TransplantOptions | None = None  # as used ("auto" candidates resolved)
    blend_weights: dict[str, dict[str, float]] = field(default_factory=dict)  # matrix -> class -> OMP weight
    blend_lines: dict[str, dict[str, tuple[float, float]]] = field(default_factory=dict)  # matrix -> class -> (a, b)
    phases: Phases = field(default_factory=Phases)  # seconds per step: blend fit, solve, fill


def new_embeddings(base_emb: Embeddings, donor_emb: Embeddings | None, vm: VocabMap, opts: TransplantOptions,
                   progress: bool = True, solutions: dict | None = None, phases: Phases | None = None) -> Transplanted:
    """Embedding rows for every donor id: copies for shared/special tokens, `opts.method` for
    the rest. `donor_emb` may be None for methods that need only the donor's tokenizer.
    `solutions` (a dict the caller keeps) reuses solves across calls that differ only in
    how rows are filled (e.g. `fvt_above`); `phases` collects seconds per step."""
    opts.check()
    phases = phases or Phases()
    if opts.method in NEEDS_DONOR_EMBEDDINGS:
        if donor_emb is None:
            raise TokenSurgeryError(f"--method {opts.method} needs the donor's embeddings")
        n_dict, width = len(vm.shared), donor_emb.input.shape[1]
        if opts.k > min(n_dict, width):
            raise TokenSurgeryError(f"k={opts.k} is larger than the dictionary allows ({n_dict} shared tokens, donor width "
                                    f"{width}); use -k {min(n_dict, width)} or less")
    n_rows = max(donor_emb.input.shape[0] if donor_emb is not None else 0, len(vm.target))
    copied = {**vm.shared, **vm.specials}
    filled = [t for t in range(n_rows) if t not in copied]
    if opts.method == "omp":  # a copy: the caller's options keep "auto"
        opts = replace(opts, candidates=resolve_candidates(opts.candidates, opts.k, len(filled), len(vm.shared)))
    shared_pairs = sorted(vm.shared.items())
    plan = {"dict_donor": [t for t, _ in shared_pairs], "dict_base": [s for _, s in shared_pairs]}
    # (BASE matrix, donor matrix it is solved in): the donor's output matrix when it has one
    spaces = {"input": (base_emb.input, donor_emb.input if donor_emb else None)}
    if not base_emb.tied:
        donor_out = None if donor_emb is None else donor_emb.output if donor_emb.output is not None else donor_emb.input
        spaces["output"] = (base_emb.output, donor_out)
    solutions = {} if solutions is None else solutions
    plugin = FILL_METHODS.get(opts.method)
    predicted = plugin.rows(base_emb, vm, filled, opts, progress) if plugin else None
    if predicted and base_emb.tied and "output" in predicted:  # e.g. a hypernetwork's output head unties BASE
        spaces["output"] = (base_emb.input, None)
    matrices, errors, n_fvt, n_capped, weights, lines = {}, None, 0, 0, {}, {}
    for name, (base_matrix, donor_matrix) in spaces.items():
        M = torch.empty(n_rows, base_matrix.shape[1], dtype=torch.float32)
        if copied:
            M[torch.tensor(list(copied))] = base_matrix[torch.tensor(list(copied.values()))].float()
        if filled:
            alpha, own, solve_ids = None, None, filled
            if opts.method == "omp" and opts.blend and vm.new_text:
                with phases("blend fit", f"blend: fitting OMP/FVT weights per token class ({name})", progress):
                    weights[name], lines[name] = _fit_blend(base_matrix, donor_matrix, plan, vm, opts)
                if not opts.blend_error:
                    lines[name] = {}
                alpha, own, classes = class_weights(filled, vm, weights[name])
                solve_ids = [t for t, a in zip(filled, alpha.tolist()) if a > 0]  # the rest is pure FVT: no solve
            solution = None
            if donor_matrix is not None and opts.method in NEEDS_DONOR_EMBEDDINGS and solve_ids:
                # a tied donor is solved once for both BASE matrices (when both solve the same tokens)
                key = (id(donor_matrix), opts.method, opts.k, opts.candidates, opts.ridge, opts.normalize, opts.dtype,
                       hash(tuple(solve_ids)))
                if key not in solutions:
                    with phases("solve", f"{opts.method}: solving {len(solve_ids):,} rows in the donor's {name} space",
                                progress):
                        solutions[key] = _solve(donor_matrix, solve_ids, plan, opts, progress)
                solution = solutions[key]
            with phases("fill rows"):
                if predicted:
                    rows, nf = predicted[name], 0
                elif alpha is None:
                    rows, nf = _fill(base_matrix, solution, vm, filled, opts, plan, progress)
                else:
                    base_f = base_matrix.float()
                    mean = base_f[sorted(set(vm.shared.values()))].mean(0)
                    rows, nf = _fvt_rows(vm, filled, base_f, mean, False), 0
                    if solve_ids:
                        at = torch.tensor([r for r, a in enumerate(alpha.tolist()) if a > 0])
                        solved, nf = _fill(base_matrix, solution, vm, solve_ids, opts, plan, progress, own[at])
                        a = alpha[at]
                        if lines[name] and solution is not None and solution.errors is not None:
                            a = token_weights(a, [classes[r] for r in at.tolist()], lines[name], solution.errors)
                        rows[at] = blend(solved, rows[at], a)
            # guard: no computed row may be longer than the longest row BASE itself has
            limit = base_matrix.float().norm(dim=1).max()
            norms = rows.norm(dim=1)
            over = norms > limit
            rows[over] *= (limit / norms[over]).unsqueeze(1)
            M[torch.tensor(filled)] = rows
            if name == "input":
                errors, n_fvt, n_capped = (solution.errors if solution else None), nf, int(over.sum())
        if not torch.isfinite(M).all():
            raise TokenSurgeryError(f"the {opts.method} {name} rows are not finite; try --dtype float64 or a larger --ridge")
        matrices[name] = M
    return Transplanted(NewEmbeddings(matrices["input"], matrices.get("output")), filled, errors, n_fvt, n_capped, opts,
                        weights, lines, phases)


def load_donor_embeddings(donor_: TokenizerInput, spec: str, vm: VocabMap, method: str) -> Embeddings | None:
    """The donor's embeddings when the method needs them (clear errors when it has none)."""
    if method not in NEEDS_DONOR_EMBEDDINGS:
        return None
    if not donor_.has_weights():
        raise TokenSurgeryError(f"donor {spec} has no weights; --method {method} needs the donor's embeddings "
                                "(fvt, mean and zero need only its tokenizer)")
    donor_emb = load_embeddings(donor_.model)
    check_embeddings_cover(donor_emb, len(vm.target), f"donor {spec}")
    return donor_emb


def transplant(base: str, donor: str, out: str | Path, options: TransplantOptions | None = None, force: bool = False,
               progress: bool = True) -> TransplantResult:
    """Write BASE's weights with DONOR's tokenizer to OUT (see the module docstring)."""
    opts = options or TransplantOptions()
    opts.check()
    start = time.perf_counter()
    from .checkpoint import check_output

    check_output(out, force=force)  # fail before the long work
    phases = Phases()
    base_dir, donor_, vm = prepare(base, donor, progress, phases)
    with donor_:
        with phases("load embeddings"):
            emb = load_embeddings(base_dir)
            check_embeddings_cover(emb, len(vm.source), f"base {base}")
            donor_emb = load_donor_embeddings(donor_, donor, vm, opts.method)
        new = new_embeddings(emb, donor_emb, vm, opts, progress, phases=phases)
        special_ids = {role: vm.target.roles.get(role) for role in ("bos", "eos", "pad")}
        with phases("output tokenizer"):
            tokenizer_src, bos_note = tokenizer_for_output(vm, donor_.files)
        if tokenizer_src != donor_.files:
            donor_.temporary.append(tokenizer_src)
        result = TransplantResult(str(base), str(donor), Path(out), vm, new.options, new.embeddings.input.shape[0],
                                  new.filled, new.errors, new.fvt_fallbacks, time.perf_counter() - start,
                                  [bos_note] if bos_note else [], capped=new.capped, blend_weights=new.blend_weights,
                                  blend_lines=new.blend_lines, phases=phases)
        with phases("write", f"writing {out}", progress):
            write_patched_checkpoint(base_dir, out, new.embeddings, tokenizer_src, special_ids,
                                     transplant_card(result), force=force,
                                     extra_inputs=[p for p in (donor_.model, donor_.files) if p is not None])
    result.seconds = time.perf_counter() - start
    return result


# ---- model card ---------------------------------------------------------------------------

def transplant_card(result: TransplantResult, quality: str = "") -> str:
    """The model card: inputs, method and parameters, error distribution, measured quality."""
    s, o = result.summary(), result.options
    params = {"method": o.method, "rows": f"{s['rows']:,}", "shared (copied)": f"{s['shared']:,}",
              "specials (copied)": f"{s['specials']:,}", "filled by the method": f"{s['filled']:,}"}
    if o.method in NEEDS_DONOR_EMBEDDINGS:
        params["k"] = o.k
    if o.method == "omp":
        params.update({"candidates (screening)": o.candidates or "all (exact)", "ridge": o.ridge, "normalize": o.normalize,
                       "affine": o.affine, "solve dtype": o.dtype})
        for name, w in result.blend_weights.items():
            params[f"OMP weight per token class, {name} (rest FVT)"] = describe(w, result.blend_lines.get(name))
        if result.blend_weights and result.errors is not None:
            params["rows solved by OMP (the rest: FVT only)"] = f"{len(result.errors):,}"
        if o.fvt_above is not None:
            params["FVT above rel. error"] = f"{o.fvt_above} ({result.fvt_fallbacks:,} tokens)"
    params["rows capped to BASE's largest norm"] = f"{result.capped:,}"
    if "rel_error_mean" in s:
        p10, p50, p90 = s["rel_error_p10_p50_p90"]
        params["donor-space reconstruction error (rel.)"] = f"mean {s['rel_error_mean']}, p10 {p10}, median {p50}, p90 {p90}"
    params["seconds"] = f"{s['seconds']} ({result.phases.line()})" if result.phases.seconds else s["seconds"]
    specials = ", ".join(f"{result.vocab_map.target.tokens[t]}<-{result.vocab_map.source.tokens[b]} ({how})"
                         for t, b in result.vocab_map.specials.items()
                         for how in [result.vocab_map.special_how[t]])
    notes = "\n".join([f"Special tokens mapped: {specials or 'none'}.", *result.notes])
    base, donor = result.base, result.donor
    return model_card(f"{Path(base).name} with the tokenizer of {Path(donor).name}", base, {"base": base, "donor": donor}, f"tokensurgery transplant --method {o.method}", params,
                      quality=quality, notes=notes)


# ---- evaluation ---------------------------------------------------------------------------

def evaluate_transplant(result: TransplantResult, files: list[Path], max_bytes: int | None = 8000,
                        progress: bool = True) -> dict[str, tuple[float, float]]:
    """Bits per byte of BASE (own tokenizer) and of the transplanted model on the same texts;
    the table is added to OUT's model card. Returns {text: (before, after)} plus 'overall'."""
    from .evaluate import load_causal_lm, score_files

    scores = {}
    for key, folder in (("before", open_model(result.base, progress=progress)), ("after", result.out)):
        model, tok = load_causal_lm(folder)
        scores[key] = score_files(model, tok, files, max_bytes=max_bytes, progress=progress)
        del model
    table = {b.name: (b.bits_per_byte, a.bits_per_byte) for b, a in zip(scores["before"], scores["after"])}
    lines = [f"Bits per byte (lower is better), first {max_bytes or 'all'} bytes of each text, 256-token windows, "
             "stride 128:", "", "| text | base, own tokenizer | transplanted |", "|---|---|---|"]
    lines += [f"| {name} | {b:.4f} | {a:.4f} |" for name, (b, a) in table.items()]
    (result.out / "README.md").write_text(transplant_card(result, "\n".join(lines)))
    return table
