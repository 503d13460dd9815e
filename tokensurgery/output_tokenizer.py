"""The tokenizer written into an output checkpoint: the new tokenizer's files, adjusted so the
model still sees what it was trained to see first.

A BASE whose tokenizer adds BOS (Gemma-3) degrades badly without it; when the new tokenizer
has a BOS token but does not add it, a copy of its files is configured to add it. Not
handled: other post-processing differences (EOS appended, chat templates), which are copied
as the new tokenizer has them.
"""

from __future__ import annotations

import json
import tempfile
import warnings
from pathlib import Path

from .vocab_map import VocabMap

TEMP_PREFIX = "tokensurgery-tok-"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                    "chat_template.jinja", "chat_template.json", "added_tokens.json", "vocab.json", "merges.txt",
                    "vocab.txt")


def tokenizer_for_output(vm: VocabMap, donor_dir: Path) -> tuple[Path, str]:
    """The donor's tokenizer files, with BOS switched on when BASE was trained to see one.

    A BASE whose tokenizer adds BOS (Gemma-3) degrades badly without it; if the donor's
    tokenizer does not add one but has a BOS token, a copy of its files is configured to add
    it (that token carries BASE's BOS row). Returns (folder to copy from, note for the card)."""
    base, donor = vm.source, vm.target
    if base.bos_added is None or donor.bos_added is not None:
        return donor_dir, ""
    bos = donor.roles.get("bos")
    if bos is None or not (donor_dir / "tokenizer.json").exists():
        msg = (f"BASE's tokenizer adds {base.tokens[base.bos_added]!r} but the donor's has no BOS token to add; "
               "the transplanted model will see texts without it (expect worse quality)")
        warnings.warn(msg, stacklevel=3)
        return donor_dir, msg
    tmp = Path(tempfile.mkdtemp(prefix=TEMP_PREFIX))
    for name in TOKENIZER_FILES:
        if (donor_dir / name).exists():
            (tmp / name).write_bytes((donor_dir / name).read_bytes())
    add_bos_to_tokenizer(tmp, donor.tokens[bos], bos)
    how = vm.special_how.get(bos, "no base counterpart")
    return tmp, (f"BASE was trained with {base.tokens[base.bos_added]!r} first; the donor's tokenizer did not add a BOS, "
                 f"so it now adds {donor.tokens[bos]!r} (id {bos}, mapped {how}).")


def add_bos_to_tokenizer(folder: Path, token: str, token_id: int) -> None:
    """Make the tokenizer in `folder` put `token` in front of every encoded text."""
    path = folder / "tokenizer.json"
    spec = json.loads(path.read_text(encoding="utf-8"))
    bos = {"SpecialToken": {"id": token, "type_id": 0}}
    template = {"type": "TemplateProcessing",
                "single": [bos, {"Sequence": {"id": "A", "type_id": 0}}],
                "pair": [bos, {"Sequence": {"id": "A", "type_id": 0}}, bos, {"Sequence": {"id": "B", "type_id": 1}}],
                "special_tokens": {token: {"id": token, "ids": [token_id], "tokens": [token]}}}
    old = spec.get("post_processor")
    if old is None or old.get("type") == "TemplateProcessing":
        spec["post_processor"] = template
    elif old.get("type") == "Sequence":
        old["processors"] = [p for p in old["processors"] if p.get("type") != "TemplateProcessing"] + [template]
    else:
        spec["post_processor"] = {"type": "Sequence", "processors": [old, template]}
    # compact: json's C encoder (with `indent` it falls back to Python, ~1 s for a 49k vocabulary)
    path.write_text(json.dumps(spec, ensure_ascii=False), encoding="utf-8")
    cfg_path = folder / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text(encoding="utf-8")) if cfg_path.exists() else {}
    cfg.update({"add_bos_token": True, "bos_token": token})
    cfg_path.write_text(json.dumps(cfg, ensure_ascii=False, indent=2), encoding="utf-8")
