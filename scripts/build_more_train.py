"""Build extra training text in the multilingual set's scripts (one file, not committed).

`tokensurgery/data/multilingual/train/` keeps at most 24,000 bytes per script group, so that
`heal` runs stay small. Hypernetworks for dynamic merging see every script only through that
text; this script writes more of the same kind for them: per group, Django 5.2.19's
translations that no committed part holds (the set's languages and TRAIN_EXTRA's) and
Sphinx 8.2.3's translations into languages of the same script (BSD-2-Clause), interface
messages as in the set, at most `--budget` bytes per group. No line of it is a line of the
set's `test/` or `dev/` half (nor of `train/`). Groups without more text (emoji, the Chinese
code) are left out. Thai, Malayalam and Kannada have no Sphinx translation.

Run: .venv/bin/python scripts/build_more_train.py OUT.txt [--wheels DIR] [--budget 40000]
(downloads the two wheels with pip into DIR when they are not there).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from build_eval_set import DJANGO_GROUPS, OUT, TRAIN_EXTRA, po_locale, train_part, wheel  # noqa: E402

WHEELS = {"django": "django==5.2.19", "sphinx": "sphinx==8.2.3"}
# group -> Sphinx locale codes in the group's script
SPHINX_GROUPS = {
    "latin-diacritics": ["cs", "pl", "tr", "vi", "sk", "hu", "ro", "lt", "lv", "sl", "hr"],
    "cyrillic": ["ru", "uk_UA", "bg", "mk", "sr"],
    "greek": ["el"],
    "arabic": ["ar", "fa", "ur"],
    "hebrew": ["he"],
    "devanagari": ["hi", "hi_IN", "ne"],
    "south-indian": ["ta", "te"],
    "chinese": ["zh_CN"],
    "japanese": ["ja"],
    "korean": ["ko"],
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path, help="text file to write")
    ap.add_argument("--wheels", type=Path, default=None, help="folder with (or for) the two wheels")
    ap.add_argument("--budget", type=int, default=40000, help="bytes per script group")
    args = ap.parse_args()
    tmp = tempfile.TemporaryDirectory() if args.wheels is None else None
    folder = args.wheels or Path(tmp.name)
    folder.mkdir(parents=True, exist_ok=True)
    held = "".join(path.read_text(encoding="utf-8") for half in ("test", "dev", "train")
                   for path in sorted((OUT / half).glob("*.txt")))
    parts = []
    with (zipfile.ZipFile(wheel("django", folder, WHEELS["django"])) as dj,
          zipfile.ZipFile(wheel("sphinx", folder, WHEELS["sphinx"])) as sp):
        for group, langs in DJANGO_GROUPS.items():
            lists = [po_locale(dj, lang) for lang in langs + TRAIN_EXTRA.get(group, [])]
            lists += [po_locale(sp, lang) for lang in SPHINX_GROUPS.get(group, [])]
            text = train_part(lists, held, args.budget).lstrip("\n")  # a group with nothing new: ""
            parts.append(text)
            print(f"{group:18s} {len(text.encode()):7,d} B", file=sys.stderr)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("".join(parts), encoding="utf-8")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
