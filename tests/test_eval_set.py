"""The multilingual evaluation set: what `--lang multilingual` reads, and that its halves
are real, separate text."""

import unicodedata

import pytest

from tokensurgery.assets import MULTILINGUAL, multilingual_groups, text_paths
from tokensurgery.cli import options
from tokensurgery.errors import TokenSurgeryError

# the script each group must be written in (a Unicode character name prefix), beyond ASCII
SCRIPTS = {"cyrillic": "CYRILLIC", "greek": "GREEK", "arabic": "ARABIC", "hebrew": "HEBREW",
           "devanagari": "DEVANAGARI", "thai": "THAI", "chinese": "CJK", "japanese": ("HIRAGANA", "KATAKANA", "CJK"),
           "korean": "HANGUL", "south-indian": ("TAMIL", "MALAYALAM", "TELUGU", "KANNADA"),
           "latin-diacritics": "LATIN", "code-zh-comments": "CJK"}


def test_every_group_has_both_halves_of_real_text():
    groups = multilingual_groups()
    assert len(groups) >= 13 and set(SCRIPTS) <= set(groups) and "emoji" in groups
    for g in groups:
        for half in ("test", "dev", "train"):
            text = (MULTILINGUAL / half / f"{g}.txt").read_text(encoding="utf-8")
            assert len(text.encode()) >= 3000, (g, half)
            if g in SCRIPTS:
                names = [unicodedata.name(c, "") for c in text if ord(c) > 127 and c.isalpha()]
                ok = sum(n.startswith(SCRIPTS[g]) for n in names)
                assert ok > 0.8 * len(names) and ok > 200, (g, half, ok, len(names))
        if g == "emoji":
            assert sum(unicodedata.category(c) == "So" for c in text) > 200
        if g != "code-zh-comments":  # code: two different files; messages: alternate entries
            test = set((MULTILINGUAL / "test" / f"{g}.txt").read_text(encoding="utf-8").splitlines())
            dev = set((MULTILINGUAL / "dev" / f"{g}.txt").read_text(encoding="utf-8").splitlines())
            assert not test & dev, (g, sorted(test & dev)[:3])
        if g == "code-zh-comments":  # other files than both halves; lines like `else:` recur
            continue
        train = set((MULTILINGUAL / "train" / f"{g}.txt").read_text(encoding="utf-8").splitlines()) - {""}
        held = set((MULTILINGUAL / "test" / f"{g}.txt").read_text(encoding="utf-8").splitlines())
        held |= set((MULTILINGUAL / "dev" / f"{g}.txt").read_text(encoding="utf-8").splitlines())
        assert len(train) > 40 and not train & held, (g, sorted(train & held)[:3])


def test_training_corpus_names_read_their_part_only():
    from tokensurgery.corpus import Corpus

    groups = multilingual_groups()
    for name, half in (("multilingual-train", "train"), ("multilingual-dev", "dev")):
        corpus = Corpus.from_paths([name])
        assert sorted(corpus.sources()) == [name] and len(corpus.texts) == len(groups)
        for n, text in corpus.texts:
            assert text == (MULTILINGUAL / half / f"{n.split(':')[1]}.txt").read_text(encoding="utf-8")
    with pytest.raises(TokenSurgeryError, match="corpus path not found"):
        Corpus.from_paths(["multilingual"])  # the test half is never a training corpus


def test_lang_names_expand_to_files():
    groups = multilingual_groups()
    assert [p.stem for p in text_paths("multilingual")] == groups
    assert all(p.parent.name == "dev" for p in text_paths("multilingual-dev"))
    assert text_paths("thai") == [MULTILINGUAL / "test" / "thai.txt"]
    files = options.text_files((), ("en", "multilingual"))
    assert files[0].name == "en.txt" and len(files) == 1 + len(groups)
    with pytest.raises(TokenSurgeryError, match="no bundled text 'klingon'.*cyrillic"):
        text_paths("klingon")
