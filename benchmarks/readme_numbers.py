"""Which numbers in README's prose no committed result file holds.

A grep-level check for issue 16's rule "every published figure comes from a result file": every
number in README.md's "Measured results" part, and in any other paragraph that cites a result
file, outside code, outside the rendered `<!-- results:NAME -->` tables (those are checked
exactly by `readme_tables.py`) and outside names (SmolLM2-135M, UTF-8, H200), must be among the
numbers of the result files its section or its paragraph cites (`results/NAME.{json,md}`,
`results/NAME.*`, `results/NAME.md`, `results/FOLDER/`; a section runs from one heading to the
next): .json values, and numbers written in .md/.log/.txt/.jsonl files. A paragraph may also
cite an earlier version of a result file as `git show COMMIT:results/FILE`. Option values in
the usage part (`--ridge 0.1`) are not figures and are not checked.

A README figure matches a result value when the value, shown with the figure's number of
decimals, is the figure — as is, or scaled by 100 (a fraction as a percentage) or 1000 (seconds
as milliseconds). A number right after the word "goal" is a target, not a figure, and is
skipped. A line that says "external", "extrapolat" or "ANCHORS" (measured elsewhere, or
extrapolated) or "ad hoc" (a one-off diagnosis no result file holds) is labelled as such and is
skipped. A 7-digit number with no separators is taken for a commit hash.

What it cannot do: tell a figure that matches by chance from one that is really cited (a
one- or two-digit figure like "3" or "12" usually matches something in a large result file), or
check a ratio computed from two values. So it finds figures that the cited files do not hold at
all; it does not prove the others are cited correctly.

Run: python benchmarks/readme_numbers.py [--readme README.md]  (exit 1 and a list when some
figure is found nowhere)
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "results"

NUMBER = re.compile(r"(?<![\w.\-/])[-−+]?\d+(?:,\d{3})*(?:\.\d+)?(?=x\b|(?![\w.]*[A-Za-z_/]))")
SKIP_LINE = re.compile(r"external|extrapolat|ANCHORS|ad[- ]hoc", re.I)
GIT_SHOW = re.compile(r"git show\s+([0-9a-f]{7,40}):(results/[\w./-]+)")
CITED = re.compile(r"(?<!:)results/([\w-]+(?:/[\w.-]+)*)")
HASH = re.compile(r"(?<![\w.,])\d{7}(?![\w.,])")
CODE_SPAN = re.compile(r"`[^`]*`")
LINK_TARGET = re.compile(r"\]\([^)]*\)")
MARKED = re.compile(r"<!-- results:(?P<name>[\w-]+) -->.*?<!-- /results:(?P=name) -->", re.S)


def prose_lines(text: str):
    """(line number, line, paragraph's first line number) of README outside fenced code and
    rendered tables; code spans, link targets and commit hashes blanked out."""
    spans = [(m.start(), m.end()) for m in MARKED.finditer(text)]
    offset, fenced, paragraph = 0, False, 1
    for number, line in enumerate(text.split("\n"), 1):
        start = offset
        offset += len(line) + 1
        if not line.strip():
            paragraph = number + 1
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        if fenced or any(a <= start < b for a, b in spans):
            continue
        yield number, HASH.sub("#", LINK_TARGET.sub("]()", CODE_SPAN.sub("``", line))), paragraph


def figures(line: str, goals: bool = True) -> list[str]:
    """The numbers of a prose line as written ('1,359.6', '+0.88', '−13.6'); goals=False leaves
    out a number that follows the word "goal" closely ("goal 0.67x", "goal: 12%", "its 300 s
    goal" is not recognised)."""
    return [m.group(0) for m in NUMBER.finditer(line) if goals or "goal" not in line[max(0, m.start() - 12):m.start()]]


def _numbers_in(value, out: list[float]) -> None:
    if isinstance(value, bool):
        return
    if isinstance(value, (int, float)):
        out.append(float(value))
    elif isinstance(value, dict):
        for v in value.values():
            _numbers_in(v, out)
    elif isinstance(value, list):
        for v in value:
            _numbers_in(v, out)
    elif isinstance(value, str):
        out.extend(_parse(s) for s in figures(value))


def _parse(figure: str) -> float:
    return float(figure.replace(",", "").replace("−", "-").lstrip("+"))


def _file_numbers(name: str, text: str, values: list[float]) -> None:
    if name.endswith(".json"):
        try:
            _numbers_in(json.loads(text), values)
        except json.JSONDecodeError:
            pass
    elif name.endswith((".md", ".log", ".txt", ".jsonl")):
        values.extend(_parse(s) for s in figures(text))


def _shown(values: list[float]) -> set[str]:
    """The values written with 0-4 decimals and at the scales above."""
    shown: set[str] = set()
    for v in values:
        for scaled in (v, v * 100, v * 1000):
            a = abs(scaled)
            for decimals in range(5):
                shown.add(f"{a:.{decimals}f}")
            # a value written with fewer digits than it has (2.3 for 2.35 is two roundings away)
            shown.add(f"{a:.2f}".rstrip("0").rstrip("."))
    return shown


def _read(path: Path, values: list[float]) -> None:
    try:
        _file_numbers(path.name, path.read_text(), values)
    except UnicodeDecodeError:
        pass


def cited_files(section: str, folder: Path = RESULTS) -> list[Path]:
    """The result files a README section names: `results/NAME...` is every file whose name
    starts with NAME followed by '.', or everything under the folder NAME."""
    out: list[Path] = []
    for name in CITED.findall(section):
        stem = name.split(".")[0]
        target = folder / stem
        if target.is_dir():
            out += [p for p in sorted(target.rglob("*")) if p.is_file()]
        else:
            out += sorted(target.parent.glob(target.name + ".*"))
    return out


def numbers_of(paths: list[Path]) -> set[str]:
    values: list[float] = []
    for path in paths:
        _read(path, values)
    return _shown(values)


def cited_numbers(commit: str, path: str) -> set[str]:
    """The numbers of `git show COMMIT:PATH` (empty when git cannot show it)."""
    shown = subprocess.run(["git", "show", f"{commit}:{path}"], cwd=ROOT, capture_output=True, text=True)
    values: list[float] = []
    if shown.returncode == 0:
        _file_numbers(path, shown.stdout, values)
    return _shown(values)


def _block(lines: list[str], first: int, is_end) -> str:
    """The text from line `first` (1-based) up to the line where is_end(line) holds."""
    end = next((i for i in range(first, len(lines)) if is_end(lines[i])), len(lines))
    return "\n".join(lines[first - 1:end])


def orphans(readme: Path, folder: Path = RESULTS) -> list[tuple[int, str, str]]:
    """(line number, figure, line) for every README figure the files its section cites do not
    hold."""
    text = readme.read_text()
    lines = text.split("\n")
    heading = [0] * (len(lines) + 1)  # line -> its section's heading line (0: before any)
    fenced = False
    for i, line in enumerate(lines, 1):
        fenced ^= line.lstrip().startswith("```")
        heading[i] = i if line.startswith("#") and not fenced else heading[i - 1]
    sections: dict[int, set[str]] = {}
    paragraphs: dict[int, set[str]] = {}
    out = []
    measured = next((i for i, l in enumerate(lines, 1) if l.startswith("## Measured results")), 0)
    after = next((i for i, l in enumerate(lines, 1) if i > measured and l.startswith("## ")), len(lines) + 1)
    for number, line, paragraph in prose_lines(text):
        h = heading[number]
        if h not in sections:
            body = lines[h - 1] + "\n" + _block(lines, h + 1, lambda l: l.startswith("#")) if h else ""
            sections[h] = numbers_of(cited_files(body, folder))
        if paragraph not in paragraphs:
            block = _block(lines, paragraph, lambda l: not l.strip())
            refs = GIT_SHOW.findall(block)
            paragraphs[paragraph] = numbers_of(cited_files(block, folder)).union(
                *(cited_numbers(c, p) for c, p in refs))
        in_results = measured and measured < number < after
        if SKIP_LINE.search(line) or not (in_results or CITED.search(_block(lines, paragraph, lambda l: not l.strip()))):
            continue
        for figure in figures(line, goals=False):
            plain = figure.replace(",", "").replace("−", "").lstrip("+-")
            if plain not in sections[h] and plain not in paragraphs[paragraph]:
                out.append((number, figure, line.strip()))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--readme", type=Path, default=ROOT / "README.md")
    args = ap.parse_args()
    found = orphans(args.readme)
    for number, figure, line in found:
        print(f"README.md:{number}: {figure}  | {line[:110]}")
    print(f"{len(found)} figure(s) in no result file", file=sys.stderr)
    sys.exit(1 if found else 0)


if __name__ == "__main__":
    main()
