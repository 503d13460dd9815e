"""Blend OMP (or k-NN) rows with FVT rows per token class, with weights fit by leave-one-out.

OMP and FVT fail on different tokens. OMP copies the donor's view of a token, which is good
for frequent words and poor where the donor's own embedding is poor (UTF-8 fragments and
scripts the donor hardly saw: OMP rows for SmolLM2's `b'\\xe0\\xa4'` put Gemma-3 at 32 bits
per byte on Hindi); FVT builds the row from BASE's own pieces. Every new token therefore
gets `alpha * omp_row + (1 - alpha) * fvt_row`, one `alpha` per class of token (a kind from
`KINDS`, and for words and pieces their script: `word:latin`, `piece:cyrillic`, ...),
chosen where the truth is known: on shared tokens of the class, each estimated without
itself (OMP over the dictionary minus the token, through the kernel's `exclude`; FVT over
the fewest pieces BASE splits its bytes into once the token itself is gone), `alpha` is the
least-squares weight that brings the blend closest to BASE's real rows, clipped to [0, 1].
By default (`TransplantOptions.blend_error`) a token's weight within a class with `alpha > 0`
is a line in its own OMP reconstruction error, `a + b * error` (clipped), fit by the same least
squares on the same shared tokens (`fit_line`): tokens the donor's dictionary explains badly
lean to FVT. A class with fewer than `MIN_SHARED` shared tokens to learn from gets `alpha = 0`: OMP
has to earn its place (words of a script the two vocabularies hardly share are judged by
that script's own shared tokens, never by Latin ones); `transplant` does not solve OMP for
tokens whose class weight is 0. Not handled: classes are by surface form only (no
frequency), and the fit compares rows, not the logits they give. One logit-side failure is
handled where the rows are made (`transplant._combine`, `affine`): an OMP row whose
coefficients sum to less than 1 carries less of the bias-like dimensions every BASE row shares
and, through a tied output matrix, outscored every BASE token in Hindi contexts (` Acknow`,
` Cind`, ` Integ` on the light pair). One class is set, not fit (`OWN_ROWS`): fragments that
start a 4-byte character and go on past its lead byte (`b'\\xf0\\x9f'`, the first half of
nearly every emoji) keep the method's own row, without the mean fill; FVT would build them
from BASE's byte-fallback rows, which say little about them.
"""

from __future__ import annotations

import unicodedata

import regex
import torch

from .vocab_map import VocabMap
from .vocabulary import Vocabulary

KINDS = ("fragment", "whitespace", "digits", "word", "piece", "symbol", "other")
MIN_SHARED = 200  # shared tokens (of two or more bytes) a class needs before its weight is fit; at 100,
# the heavy pair's Latin-accented pieces (122 shared) got 0.90 and scored worse than FVT on the `dev`
# half, Czech/Polish/Vietnamese text included (3.3556 vs 3.3348 bits per byte; South Indian 1.968 vs 1.907)
OWN_ROWS = ("fragment:4-byte",)  # classes whose new rows are the method's own: weight 1, no affine fill.
# Chosen on the `dev` half (results/transplant_light_own_rows_dev.*, against
# results/transplant_light_affine_dev.*): emoji text 1.6354 -> 1.5848 bits per byte, overall
# 2.6320 -> 2.6276, the other groups within 0.007; ad hoc, the same rows with the mean fill, or every
# fragment as OMP's own row, were worse (Chinese 3.718 -> 4.332).
# No shared token of the class exists to fit a weight on (BASE spells such bytes by byte fallback).
SAMPLE = 128  # shared tokens per class used for the fit (spread evenly over the class); 256 took
# twice the leave-one-out solve (light pair: 4.5 s vs 2.8 s) for weights within 0.025 of these
_LETTERS = regex.compile(r"[\p{L}\p{M}]+")  # fullmatch: a final newline is not a letter


def script(text: str) -> str:
    """The script of a word: the first word of its first letter's Unicode name, lowercased
    (`latin`, `cyrillic`, `greek`, `cjk`, `hiragana`, `hangul`, `thai`, ...); Latin words with
    a letter outside ASCII are `latin-accented` (Czech, Polish, Vietnamese words are not
    judged by the mostly English ASCII ones)."""
    first = next((c for c in text if c.isalpha()), "")
    name = "latin" if first.isascii() else unicodedata.name(first, "unknown").split()[0].lower()
    if name == "latin" and not text.isascii():
        return "latin-accented" if all(c.isascii() or unicodedata.name(c, "").startswith("LATIN")
                                       or unicodedata.category(c).startswith("M") for c in text) else "mixed"
    return name


def token_class(surface: bytes) -> str:
    """The class of a token by its bytes: `fragment` (not whole UTF-8 characters;
    `fragment:4-byte` when, after a leading space, it is a 4-byte character's lead byte and more:
    a lone lead byte, such as a byte-fallback `<0xF1>`, stays `fragment`),
    `whitespace`, `digits` (has a digit), `word:<script>` (leading space, then letters
    only), `piece:<script>` (letters only, no leading space), `symbol` (has a non-ASCII
    symbol: emoji, arrows, box drawing, currency), `other` (punctuation, code, mixtures) or,
    when its first letter is not ASCII, `other:<script>` (Malayalam or Telugu letters with a
    zero-width joiner or non-joiner, Arabic with its own full stop: pieces of words of a script,
    not to be judged by ASCII punctuation and code)."""
    try:
        text = surface.decode("utf-8")
    except UnicodeDecodeError:
        lead = surface.lstrip(b" ")
        return "fragment:4-byte" if len(lead) > 1 and lead[0] >= 0xF0 else "fragment"
    if not text or text.isspace():
        return "whitespace"
    if any(c.isdigit() for c in text):
        return "digits"
    word = text[1:] if text.startswith(" ") else text
    if text.isascii():  # most tokens; the same answer as below, without regex and Unicode names
        return f"{'word' if text.startswith(' ') else 'piece'}:latin" if word.isalpha() else "other"
    if not _LETTERS.fullmatch(word):
        if any(not c.isascii() and unicodedata.category(c)[0] == "S" for c in text):
            return "symbol"
        first = next((c for c in text if c.isalpha()), "")
        return f"other:{script(text)}" if first and not first.isascii() else "other"
    return f"{'word' if text.startswith(' ') else 'piece'}:{script(word)}"


def split_pieces(vocab: Vocabulary, data: bytes) -> list[int] | None:
    """BASE's ids for `data` when the token spelling it is gone: the split of `data` into
    two parts, each decomposed by BASE, with the fewest pieces (None for one byte)."""
    best = None
    for i in range(1, len(data)):
        pieces = vocab.decompose(data[:i]) + vocab.decompose(data[i:])
        if pieces and (best is None or len(pieces) < len(best)):
            best = pieces
    return best


def sample_shared(vm: VocabMap) -> dict[str, list[int]]:
    """Up to SAMPLE shared donor ids per class (evenly spread over the class, by id), for the
    classes with at least MIN_SHARED shared tokens."""
    by_class: dict[str, list[int]] = {}
    for t in sorted(vm.shared):
        if len(vm.target.surface[t]) > 1:  # a single byte has no pieces to fall back to
            by_class.setdefault(token_class(vm.target.surface[t]), []).append(t)
    return {c: ids[:: max(1, len(ids) // SAMPLE)][:SAMPLE] for c, ids in by_class.items() if len(ids) >= MIN_SHARED}


def fit_weights(base: torch.Tensor, vm: VocabMap, loo_rows, sample: dict[str, list[int]]
                ) -> tuple[dict[str, float], dict[str, tuple[float, float]]]:
    """`alpha` per class, and per class with `alpha > 0` a line `(a, b)` in the OMP error
    (`fit_line`). `loo_rows(ids)` gives the method's rows for shared donor ids, each fit
    without itself, and their relative reconstruction errors in the donor space; `alpha` is
    the least-squares weight of those rows against FVT's on the sampled shared tokens; 0 for a
    class with no sample or fewer than SAMPLE / 2 samples BASE can spell without the token.
    Every class of a new text token gets a weight; `OWN_ROWS` classes get 1 and no line."""
    base = base.float()
    # the method's rows first, in one call (each row is fit without its own token, whatever
    # else is asked): BASE's tokenizer, which the pieces below need, can load meanwhile
    asked = [t for ids in sample.values() if len(ids) >= SAMPLE // 2 for t in ids]
    method, error = {}, {}
    if asked:
        rows, errors = loo_rows(asked)
        method, error = dict(zip(asked, rows.float())), dict(zip(asked, errors.float().tolist()))
    weights: dict[str, float] = {}
    lines: dict[str, tuple[float, float]] = {}
    classes = sorted(set(sample) | {token_class(vm.target.surface[t]) for t in vm.new_text})
    for c in classes:
        if c in OWN_ROWS:
            weights[c] = 1.0
            continue
        pairs = [(t, p) for t in sample.get(c, []) if (p := split_pieces(vm.source, vm.target.surface[t]))]
        if len(pairs) < SAMPLE // 2:
            weights[c] = 0.0
            continue
        rows = torch.stack([method[t] for t, _ in pairs])
        truth = base[torch.tensor([vm.shared[t] for t, _ in pairs])]
        fvt = torch.stack([base[torch.tensor(p)].mean(0) for _, p in pairs])
        d = rows - fvt
        alpha = ((truth - fvt) * d).sum() / (d * d).sum().clamp(min=1e-12)
        weights[c] = round(float(alpha.clamp(0.0, 1.0)), 4)
        if weights[c] > 0:
            lines[c] = fit_line(truth - fvt, d, torch.tensor([error[t] for t, _ in pairs]))
    return weights, lines


def fit_line(gap: torch.Tensor, d: torch.Tensor, errors: torch.Tensor) -> tuple[float, float]:
    """`(a, b)` minimising `sum_t |gap_t - (a + b * errors_t) * d_t|^2`: a token's OMP weight as a
    line in its OMP reconstruction error (`gap` = true row - FVT row, `d` = method row - FVT row).

    Why: within a class, the leave-one-out weight that would bring a shared token's blend closest
    to its true row falls with the token's error (light pair, ad hoc: correlation -0.66 to -0.77
    over the classes that get OMP weight); one weight per class gave OMP rows the donor explains
    badly (SmolLM2's `literals`, relative error 0.52, nearest rows `swigfaiss`, `kinesisfirehose`)
    the same share as well-explained ones. With all errors equal the line is flat: `(alpha, 0)`."""
    dd, y, e = (d * d).sum(1).double(), (gap * d).sum(1).double(), errors.double()
    A = torch.stack([torch.stack([dd.sum(), (e * dd).sum()]), torch.stack([(e * dd).sum(), (e * e * dd).sum()])])
    rhs = torch.stack([y.sum(), (e * y).sum()])
    if torch.linalg.det(A).abs() <= 1e-9 * A.abs().max() ** 2:  # one error value: no slope to fit
        return round(float(y.sum() / dd.sum().clamp(min=1e-12)), 4), 0.0
    a, b = torch.linalg.solve(A, rhs).tolist()
    return round(a, 4), round(b, 4)


def token_weights(alpha: torch.Tensor, classes: list[str | None], lines: dict[str, tuple[float, float]],
                  errors: torch.Tensor) -> torch.Tensor:
    """Each token's OMP weight: `a + b * error` from its class's line, clipped to [0, 1], where the
    class has a line; `alpha` (the class's constant weight) elsewhere."""
    out = alpha.clone().float()
    for i, (c, e) in enumerate(zip(classes, errors.float().tolist())):
        if c in lines:
            a, b = lines[c]
            out[i] = min(1.0, max(0.0, a + b * e))
    return out


def class_weights(ids: list[int], vm: VocabMap, weights: dict[str, float]
                  ) -> tuple[torch.Tensor, torch.Tensor, list[str | None]]:
    """The OMP weight `alpha` of each donor id: its class's weight for new text tokens, 1 for
    rows that are not text tokens (specials, placeholders keep the method's row); whether
    the row is the method's own, without the mean fill (a new text token of an `OWN_ROWS` class);
    and each id's class (None for rows that are not text tokens)."""
    text = set(vm.new_text)
    classes = [token_class(vm.target.surface[t]) if t in text else None for t in ids]
    alpha = torch.tensor([1.0 if c is None else weights.get(c, 0.0) for c in classes])
    return alpha, torch.tensor([c in OWN_ROWS for c in classes], dtype=torch.bool), classes


def blend(method_rows: torch.Tensor, fvt_rows: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """`alpha * method + (1 - alpha) * fvt`, row by row."""
    return alpha[:, None] * method_rows + (1 - alpha[:, None]) * fvt_rows


def describe(weights: dict[str, float], lines: dict[str, tuple[float, float]] | None = None) -> str:
    """One line: the classes that got an OMP weight (with the line in the error, if any), then
    how many got FVT only."""
    lines = lines or {}
    some = [f"{c} {a:.2f}" + (f" ({lines[c][0]:.2f} {'-' if lines[c][1] < 0 else '+'} {abs(lines[c][1]):.2f} x error)"
                              if c in lines else "") for c, a in sorted(weights.items()) if a > 0]
    rest = len(weights) - len(some)
    return ", ".join(some) + (f"; FVT only: {rest} other classes" if rest else "") if some else f"FVT only ({rest} classes)"
