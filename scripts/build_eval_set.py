"""Build the multilingual evaluation set (tokensurgery/data/multilingual/) from PyPI wheels.

The texts are real text that three PyPI packages carry (sources and licences in the set's
README.md, which this script writes too):
- Django 5.2.19: the translations of its messages (`*/locale/<lang>/LC_MESSAGES/*.po`,
  `msgstr` entries), one group per script, several languages per group where one script
  has several;
- emoji 2.16.0: `unicode_codes/emoji.json`, each emoji with its English name;
- pypinyin 0.55.0: Python source whose comments and docstrings are Chinese.

Every group gets two disjoint halves: `test/` (what benchmarks report) and `dev/` (what a
default may be tuned on). Entries alternate between them in file order, so both halves
draw from the same files; no entry is in both. A third part, `train/`, is training text
for `heal` (`--corpus multilingual-train`): the same groups' entries that neither half
took, plus other languages written in the same script (TRAIN_EXTRA), other pypinyin
modules and the emoji neither half took; no line of it is a line of `test/` or `dev/`.

Run: .venv/bin/python scripts/build_eval_set.py [--wheels DIR] (downloads the three wheels
with pip into DIR when they are not there; needs the package index, not the internet hub).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tokensurgery" / "data" / "multilingual"
WHEELS = {"django": "django==5.2.19", "emoji": "emoji==2.16.0", "pypinyin": "pypinyin==0.55.0"}
BUDGET = 4000  # bytes per group and half (whole entries; split evenly over a group's languages)

# group -> Django locale codes (one script per group)
DJANGO_GROUPS = {
    "latin-diacritics": ["cs", "pl", "vi", "tr"],
    "cyrillic": ["ru", "uk"],
    "greek": ["el"],
    "arabic": ["ar", "fa"],
    "hebrew": ["he"],
    "devanagari": ["hi", "mr"],
    "south-indian": ["ta", "ml", "te", "kn"],
    "thai": ["th"],
    "chinese": ["zh_Hans"],
    "japanese": ["ja"],
    "korean": ["ko"],
}
CODE_FILES = {"test": "pypinyin/core.py", "dev": "pypinyin/converter.py"}
# train/ only: more languages in a group's script. Left out on purpose: ar_DZ (mostly a copy
# of ar) and zh_Hant (largely zh_Hans converted character by character), both too close to
# the test half's languages.
TRAIN_EXTRA = {
    "latin-diacritics": ["sk", "hu", "ro", "lt", "lv", "sl", "hr", "az"],
    "cyrillic": ["bg", "be", "sr", "mk", "mn", "ky", "tg", "kk"],
    "arabic": ["ur", "ckb", "ug"],
    "devanagari": ["ne"],
}
TRAIN_BUDGET = 24000  # bytes per group of train/
TRAIN_CODE = ["pypinyin/style/_tone_convert.py", "pypinyin/constants.py", "pypinyin/seg/mmseg.py",
              "pypinyin/standard.py", "pypinyin/style/__init__.py", "pypinyin/style/_utils.py"]

README = """# Multilingual evaluation set

Real text from PyPI packages, one file per script group, in two disjoint halves:
`test/` is what the benchmarks and `tokensurgery eval --lang multilingual` report;
`dev/` is what a default may be chosen on (`--lang multilingual-dev`). Built by
`python scripts/build_eval_set.py` (the command regenerates these files byte for byte).

| group | text | source | licence |
|---|---|---|---|
{rows}

Django's translations are short interface messages (one `msgstr` per line, placeholders
such as `%(name)s` kept); they are human translations, not machine output, but they are
not running prose. Each group holds about {budget:,} bytes per half.

`train/` is training text, never scored (`tokensurgery heal --corpus multilingual-train`):
about {train_budget:,} bytes per group of the same sources, none of its lines in `test/` or
`dev/`: the entries the halves did not take, plus Django's translations into {extra}
(same script as their group; ar_DZ and zh_Hant are left out as too close to ar and
zh_Hans), the emoji neither half took, and the pypinyin modules {code}.
"""


def wheel(name: str, folder: Path, spec: str | None = None) -> Path:
    """The wheel of package `name` in `folder` (any case), downloaded there first with pip
    (`spec`, default WHEELS[name]) when it is missing."""

    def found() -> list[Path]:
        return sorted(p for p in folder.glob("*.whl") if p.name.lower().startswith(f"{name.lower()}-"))

    if not found():
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(folder),
                        spec or WHEELS[name]], check=True)
    return found()[-1]


def po_locale(z: zipfile.ZipFile, lang: str) -> list[str]:
    """`po_strings` of every `.po` file of locale `lang` in wheel `z`, in file-name order."""
    names = sorted(n for n in z.namelist() if n.endswith(".po") and f"/locale/{lang}/LC_MESSAGES/" in n)
    return [s for n in names for s in po_strings(z.read(n).decode("utf-8"))]


def po_strings(text: str) -> list[str]:
    """The translations (msgstr) of the messages whose English (msgid) has at least four
    words, so that language names and single labels are left out; escapes resolved,
    lines joined by spaces; the header entry (empty msgid) is skipped."""

    def joined(quoted: str) -> str:
        s = "".join(re.findall(r'"((?:[^"\\]|\\.)*)"', quoted))
        s = s.replace('\\"', '"').replace("\\n", " ").replace("\\t", " ").replace("\\\\", "\\")
        return " ".join(s.split())

    out = []
    entry = re.compile(r'^msgid ((?:"(?:[^"\\]|\\.)*"\s*)+)(?:msgid_plural (?:"(?:[^"\\]|\\.)*"\s*)+)?'
                       r'msgstr(?:\[0\])? ((?:"(?:[^"\\]|\\.)*"\s*)+)', re.M)
    for m in entry.finditer(text):
        english, translated = joined(m.group(1)), joined(m.group(2))
        if len(english.split()) >= 4 and translated:
            out.append(translated)
    return out


def take(entries: list[str], budget: int) -> str:
    lines, size = [], 0
    for e in entries:
        if size + len(e.encode()) + 1 > budget:
            break
        lines.append(e)
        size += len(e.encode()) + 1
    return "\n".join(lines) + "\n"


def interleave(lists: list[list[str]]) -> list[str]:
    """One entry of each list in turn, until all are used."""
    out = []
    for i in range(max(map(len, lists), default=0)):
        out += [lst[i] for lst in lists if i < len(lst)]
    return out


def train_part(entries: list[list[str]], held: str, budget: int) -> str:
    """Entries (one list per language, interleaved) that are no line of `held` (the test and
    dev text of the group), up to `budget` bytes."""
    taken = set(held.splitlines())
    seen, lines = set(taken), []
    for e in interleave(entries):
        if e not in seen:
            seen.add(e), lines.append(e)
    return take(lines, budget)


def halves(entries: list[str]) -> dict[str, list[str]]:
    seen, unique = set(), []
    for e in entries:
        if e not in seen:
            seen.add(e), unique.append(e)
    return {"test": unique[0::2], "dev": unique[1::2]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--wheels", type=Path, default=None, help="folder with (or for) the three wheels")
    args = ap.parse_args()
    tmp = tempfile.TemporaryDirectory() if args.wheels is None else None
    folder = args.wheels or Path(tmp.name)
    folder.mkdir(parents=True, exist_ok=True)
    texts: dict[str, dict[str, str]] = {"test": {}, "dev": {}, "train": {}}
    rows = []

    with zipfile.ZipFile(wheel("django", folder)) as z:
        for group, langs in DJANGO_GROUPS.items():
            parts = {"test": [], "dev": []}
            for lang in langs:
                for half, es in halves(po_locale(z, lang)).items():
                    parts[half].append(take(es, BUDGET // len(langs)))
            for half in parts:
                texts[half][group] = "".join(parts[half])
            held = texts["test"][group] + texts["dev"][group]
            texts["train"][group] = train_part([po_locale(z, lang) for lang in langs + TRAIN_EXTRA.get(group, [])],
                                               held, TRAIN_BUDGET)
            rows.append(f"| {group} | {', '.join(langs)} | Django 5.2.19 message translations | BSD-3-Clause |")

    with zipfile.ZipFile(wheel("emoji", folder)) as z:
        data = json.loads(z.read("emoji/unicode_codes/emoji.json"))
        entries = [f"{e} {v['en'].strip(':').replace('_', ' ')}" for e, v in data.items() if v.get("status") == 2]
        # a line of 8 emoji with their names, so the text is mostly emoji and short words
        lines = [" · ".join(entries[i : i + 8]) for i in range(0, len(entries), 8)]
        for half, es in halves(lines).items():
            texts[half]["emoji"] = take(es, BUDGET)
        texts["train"]["emoji"] = train_part([lines], texts["test"]["emoji"] + texts["dev"]["emoji"], TRAIN_BUDGET)
        rows.append("| emoji | emoji (fully qualified) with English names | emoji 2.16.0 `unicode_codes/emoji.json` | BSD-3-Clause |")

    with zipfile.ZipFile(wheel("pypinyin", folder)) as z:
        for half, path in CODE_FILES.items():
            code = z.read(path).decode("utf-8")
            texts[half]["code-zh-comments"] = code.encode()[:BUDGET].decode("utf-8", "ignore").rsplit("\n", 1)[0] + "\n"
        code = "".join(z.read(path).decode("utf-8") for path in TRAIN_CODE)
        texts["train"]["code-zh-comments"] = code.encode()[:TRAIN_BUDGET].decode("utf-8", "ignore").rsplit("\n", 1)[0] + "\n"
        rows.append(f"| code-zh-comments | Python with Chinese docstrings (`{CODE_FILES['test']}`; dev: "
                    f"`{CODE_FILES['dev']}`), first {BUDGET:,} bytes | pypinyin 0.55.0 | MIT |")

    for half, groups in texts.items():
        (OUT / half).mkdir(parents=True, exist_ok=True)
        for group, text in groups.items():
            (OUT / half / f"{group}.txt").write_text(text, encoding="utf-8")
    extra = ", ".join(f"{', '.join(langs)} ({group})" for group, langs in TRAIN_EXTRA.items())
    code = ", ".join(f"`{p}`" for p in TRAIN_CODE)
    (OUT / "README.md").write_text(README.format(rows="\n".join(rows), budget=BUDGET, train_budget=TRAIN_BUDGET,
                                                 extra=extra, code=code), encoding="utf-8")
    for group in texts["test"]:
        print(f"{group:18s} test {len(texts['test'][group].encode()):6,d} B   dev {len(texts['dev'][group].encode()):6,d} B"
              f"   train {len(texts['train'][group].encode()):6,d} B")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
