"""The per-class OMP/FVT blend: token classes, leave-one-out pieces, the least-squares weight,
and the transplant's blended rows against separately computed OMP and FVT transplants."""

import pytest
import torch
from hypothesis import example, given
from hypothesis import strategies as st

from tokensurgery import blend as blend_module
from tokensurgery.blend import KINDS, describe, fit_line, fit_weights, split_pieces, token_class, token_weights
from tokensurgery.checkpoint import load_embeddings
from tokensurgery.transplant import TransplantOptions, transplant
from tokensurgery.vocabulary import Vocabulary


@pytest.mark.parametrize("surface,cls", [(b" hello", "word:latin"), (b"ing", "piece:latin"), (" für".encode(), "word:latin-accented"), ("ção".encode(), "piece:latin-accented"), (" aλ".encode(), "word:mixed"),
                                         (" мир".encode(), "word:cyrillic"), ("के".encode(), "piece:devanagari"),
                                         ("中文".encode(), "piece:cjk"), (b"\xe0\xa4", "fragment"), (b" \xd0", "fragment"),
                                         (b"\xf0\x9f", "fragment:4-byte"), (b" \xf0\x9f\x98", "fragment:4-byte"),
                                         (b"\x9f\x98\x80", "fragment"), (b"\xef\xbc", "fragment"), (b"\xf1", "fragment"),
                                         (b" \xf0", "fragment"),
                                         (b"\n\n  ", "whitespace"), (b" 2024", "digits"), (b"()", "other"), (b" don't", "other"),
                                         ("😀".encode(), "symbol"), (" →".encode(), "symbol"), (" –".encode(), "other"),
                                         ("’s".encode(), "other"), ("ര്\u200d".encode(), "other:malayalam"),
                                         (" ہے۔".encode(), "other:arabic"), ("é.".encode(), "other:latin-accented")])
def test_token_class(surface, cls):
    assert token_class(surface) == cls and cls.split(":")[0] in KINDS


@pytest.mark.parametrize("family", ["byte_level_bpe", "sentencepiece_bpe"])
def test_split_pieces_is_the_fewest_pieces_over_all_two_part_splits(tiny_tokenizers, family):
    vocab = Vocabulary.from_hf_tokenizer(tiny_tokenizers[family])
    checked = 0
    for t in range(len(vocab)):
        data = vocab.surface[t]
        if len(data) < 3 or t in vocab.special_ids:
            continue
        got = split_pieces(vocab, data)
        best = min(len(vocab.decompose(data[:i]) + vocab.decompose(data[i:])) for i in range(1, len(data)))
        assert len(got) == best and len(got) >= 2 and vocab.decode_bytes(got) == data and t not in got
        checked += 1
    assert checked > 100


class _FakeVocab:
    def __init__(self, surfaces):
        self.surface = surfaces

    def decompose(self, data):  # one piece per byte: byte b is id b
        return list(data)


class _FakeMap:
    def __init__(self, source, target, shared, new_text):
        self.source, self.target, self.shared, self.new_text = source, target, shared, new_text


def test_fit_weights_recovers_a_known_mixture(monkeypatch):
    """BASE rows built as exactly 0.3 * method + 0.7 * FVT for ascii words: alpha = 0.3 and a
    flat line (0.3, 0) whatever the errors; pieces built with weight 1.2 - 1.5 * error: that
    line back exactly; a class with too few shared tokens gets 0 and no line."""
    monkeypatch.setattr(blend_module, "SAMPLE", 32)  # a class is fit from 16 samples
    torch.manual_seed(0)
    d = 16
    base = torch.randn(400, d)  # ids 0..255: bytes; 256+: whole tokens
    words = [bytes([32]) + bytes(97 + (i * 7 + j) % 26 for j in range(3)) for i in range(40)]
    pieces = [b"xy" + bytes([97 + i % 26]) for i in range(40)]
    target_surfaces = words + pieces + [b"\xe0\xa4"]
    shared = {t: 256 + t for t in range(80)}
    method = torch.randn(80, d)
    errors = torch.rand(80) * 0.6 + 0.1
    for t, s in enumerate(target_surfaces[:80]):
        fvt = base[list(s)].mean(0)
        mix = 0.3 if t < 40 else 1.2 - 1.5 * errors[t]
        base[256 + t] = mix * method[t] + (1 - mix) * fvt
    vm = _FakeMap(_FakeVocab(None), _FakeVocab(target_surfaces), shared, new_text=[80])
    weights, lines = fit_weights(base, vm, lambda ids: (method[torch.tensor(ids)], errors[torch.tensor(ids)]),
                                 {"word:latin": list(range(40)), "piece:latin": list(range(40, 80)),
                                  "word:greek": list(range(40))[:5]})
    assert weights["word:latin"] == pytest.approx(0.3, abs=1e-4)
    assert lines["word:latin"] == pytest.approx((0.3, 0.0), abs=1e-3)
    assert 0 < weights["piece:latin"] < 1 and lines["piece:latin"] == pytest.approx((1.2, -1.5), abs=1e-3)
    assert weights["fragment"] == 0.0 and weights["word:greek"] == 0.0  # a new token's class with no samples / 5 < SAMPLE / 2
    assert "fragment" not in lines and "word:greek" not in lines


def test_fit_line_is_least_squares_over_rows_and_flat_for_one_error():
    """Against a brute-force grid search of the same objective; equal errors give the flat weight."""
    torch.manual_seed(1)
    gap, d, e = torch.randn(30, 8), torch.randn(30, 8), torch.rand(30)
    a, b = fit_line(gap, d, e)

    def loss(a, b):
        return float(((gap - (a + b * e)[:, None] * d) ** 2).sum())
    grid = [(loss(a + da, b + db), da, db) for da in (-0.01, 0, 0.01) for db in (-0.01, 0, 0.01)]
    assert min(grid)[1:] == (0, 0)  # no neighbour on the grid does better
    flat = fit_line(gap, d, torch.full((30,), 0.4))
    assert flat[1] == 0.0 and flat[0] == pytest.approx(float((gap * d).sum() / (d * d).sum()), abs=1e-4)


def test_token_weights_clip_the_line_and_keep_classes_without_one():
    alpha = torch.tensor([0.5, 0.5, 0.5, 1.0])
    got = token_weights(alpha, ["other", "other", "other", None], {"other": (1.2, -2.0)}, torch.tensor([0.05, 0.3, 0.9, 0.5]))
    torch.testing.assert_close(got, torch.tensor([1.0, 0.6, 0.0, 1.0]))


def test_sample_shared_skips_classes_below_min_shared():
    """Classes are judged by their whole count of shared tokens, then sampled evenly."""
    from tokensurgery.blend import MIN_SHARED, SAMPLE, sample_shared

    words = [b" w" + bytes([97 + i // 26, 97 + i % 26]) for i in range(2 * MIN_SHARED + 50)]
    accented = ["é".encode() + bytes([97 + i // 26, 97 + i % 26]) for i in range(MIN_SHARED - 1)]
    surfaces = words + accented + [b"x"]  # one byte: never sampled
    vm = _FakeMap(None, _FakeVocab(surfaces), {t: t for t in range(len(surfaces))}, new_text=[])
    sample = sample_shared(vm)
    assert set(sample) == {"word:latin"} and len(sample["word:latin"]) == SAMPLE
    assert len(set(sample["word:latin"])) == SAMPLE and max(sample["word:latin"]) > SAMPLE  # spread, not the first ones


@pytest.mark.parametrize("by_error", [False, True])
def test_blended_rows_are_the_class_weighted_mix_of_omp_and_fvt(tiny_model_dirs, tmp_path, monkeypatch, by_error):
    """Every new row is its mix of the OMP and FVT transplants' rows: with `blend_error=False`
    its class's weight; by default its class's line in its own OMP error (from the result's
    errors, in solve order), clipped to [0, 1]. An `OWN_ROWS` class (here Latin pieces: the tiny
    vocabularies have no emoji fragments) is the OMP row without the mean fill."""
    monkeypatch.setattr(blend_module, "MIN_SHARED", 16)  # the tiny vocabularies have few tokens per class
    monkeypatch.setattr(blend_module, "SAMPLE", 32)
    monkeypatch.setattr(blend_module, "OWN_ROWS", ("piece:latin",))
    base, donor = tiny_model_dirs["tied"], tiny_model_dirs["bos"]
    runs = {name: transplant(str(base), str(donor), tmp_path / name, TransplantOptions(k=4, **o), progress=False)
            for name, o in {"blend": {"blend_error": by_error}, "omp": {"blend": False}, "fvt": {"method": "fvt"},
                            "plain": {"blend": False, "affine": False}}.items()}
    result = runs["blend"]
    weights, lines = result.blend_weights["input"], result.blend_lines["input"]
    assert any(0 < a < 1 for a in weights.values()) and weights["piece:latin"] == 1.0
    assert bool(lines) == by_error and "piece:latin" not in lines
    card = (tmp_path / "blend" / "README.md").read_text()
    assert describe(weights, lines) in card and "OMP weight per token class" not in (tmp_path / "omp" / "README.md").read_text()
    assert ("x error" in card) == by_error
    rows = {n: load_embeddings(tmp_path / n).input.float() for n in runs}
    vm = result.vocab_map
    text = set(vm.new_text)
    solved = [t for t in result.filled if t not in text or weights[token_class(vm.target.surface[t])] > 0]
    error = dict(zip(solved, result.errors.tolist()))
    checked, own, moved = 0, 0, 0
    for t in vm.new_text:
        cls = token_class(vm.target.surface[t])
        a = weights[cls]  # every new token's class has a weight
        if cls in lines:
            a_line = min(1.0, max(0.0, lines[cls][0] + lines[cls][1] * error[t]))
            moved += abs(a_line - a) > 0.02
            a = a_line
        want = a * rows["omp"][t] + (1 - a) * rows["fvt"][t] if cls != "piece:latin" else rows["plain"][t]
        own += cls == "piece:latin" and not torch.allclose(rows["plain"][t], rows["omp"][t], atol=1e-4)
        limit = load_embeddings(base).input.float().norm(dim=1).max()
        want = want * min(1.0, float(limit / want.norm()))  # the norm cap applies after the blend
        torch.testing.assert_close(rows["blend"][t], want, atol=1e-5, rtol=1e-5)
        checked += 1
    assert checked > 10 and own > 5  # the mean fill changes those rows: the comparison can tell them apart
    assert (moved > 5) == by_error  # the line gives tokens other weights than their class's
    for t in vm.shared:  # copied rows untouched
        assert torch.equal(rows["blend"][t], rows["omp"][t])


@given(st.text(alphabet=st.characters(max_codepoint=127), max_size=12))
@example(" word")
@example("piece")
@example("A\n")
@example(" a-b")
def test_ascii_token_classes_follow_the_general_rule(text):
    """ASCII tokens take a fast path in token_class; reference: the rule as documented."""
    import regex

    if not text or text.isspace():
        want = "whitespace"
    elif any(c.isdigit() for c in text):
        want = "digits"
    else:
        word = text[1:] if text.startswith(" ") else text
        letters = regex.fullmatch(r"[\p{L}\p{M}]+", word) is not None
        want = f"{'word' if text.startswith(' ') else 'piece'}:latin" if letters else "other"
    assert token_class(text.encode()) == want
