"""VocabMap: how a target vocabulary's tokens relate to a source vocabulary's.

For every target id exactly one of:
- *shared*: a source token with the same surface bytes and a compatible kind (copy its row);
- *special*: a special token matched by role (bos/eos/pad/unk/mask), then by content;
- *new*: everything else; each new token is decomposed into source ids, the way the source
  tokenizer would split those bytes mid-text (the input of FVT and of the hypernetwork).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

from .progress import bar
from .vocabulary import ROLES, TEXT_KINDS, TokenKind, Vocabulary


@dataclass
class VocabMap:
    """Maps `target` ids onto `source` ids (`source` is the model's current vocabulary)."""

    source: Vocabulary
    target: Vocabulary
    shared: dict[int, int] = field(default_factory=dict)  # target id -> source id
    specials: dict[int, int] = field(default_factory=dict)  # target id -> source id
    special_how: dict[int, str] = field(default_factory=dict)  # target id -> "role:bos" / "content"
    new: list[int] = field(default_factory=list)  # target ids with no source counterpart
    unused: list[int] = field(default_factory=list)  # target placeholders (no text, no role)
    _pieces: dict[int, list[int]] = field(default_factory=dict, repr=False, compare=False)  # decompose() cache

    @classmethod
    def build(cls, source: Vocabulary, target: Vocabulary) -> "VocabMap":
        vm = cls(source, target)
        # specials: by role first, then by exact content among the remaining specials
        for role in ROLES:
            t, s = target.roles.get(role), source.roles.get(role)
            if t is not None and s is not None and t not in vm.specials:
                vm.specials[t], vm.special_how[t] = s, f"role:{role}"
        source_specials = {source.tokens[i]: i for i, k in enumerate(source.kinds) if k in (TokenKind.SPECIAL, TokenKind.UNUSED)}
        for t, kind in enumerate(target.kinds):
            if kind == TokenKind.SPECIAL and t not in vm.specials and target.tokens[t] in source_specials:
                vm.specials[t], vm.special_how[t] = source_specials[target.tokens[t]], "content"
        # text tokens: by surface bytes
        index = source.by_bytes
        for t, kind in enumerate(target.kinds):
            if t in vm.specials:
                continue
            if kind in TEXT_KINDS:
                s = index.get(target.surface[t])
                if s is not None:
                    vm.shared[t] = s
                else:
                    vm.new.append(t)
            elif kind == TokenKind.SPECIAL:
                vm.new.append(t)
            else:
                vm.unused.append(t)
        return vm

    @cached_property
    def new_text(self) -> list[int]:
        """New target tokens that are text (have surface bytes to decompose)."""
        return [t for t in self.new if self.target.kinds[t] in TEXT_KINDS]

    @cached_property
    def new_special(self) -> list[int]:
        return [t for t in self.new if self.target.kinds[t] == TokenKind.SPECIAL]

    def decompose(self, target_id: int) -> list[int]:
        """Source ids that spell target token `target_id` (itself if shared or mapped)."""
        if target_id in self.shared:
            return [self.shared[target_id]]
        if target_id in self.specials:
            return [self.specials[target_id]]
        if target_id not in self._pieces:  # FVT asks once per matrix; the tokenizer call is the slow part
            self._pieces[target_id] = self.source.decompose(self.target.surface[target_id])
        return list(self._pieces[target_id])

    def decompositions(self, target_ids: list[int] | None = None, progress: bool = False) -> dict[int, list[int]]:
        ids = self.new_text if target_ids is None else target_ids
        return {t: self.decompose(t) for t in bar(ids, "decomposing new tokens", total=len(ids), enabled=progress)}

    def summary(self) -> dict:
        return {
            "source": self.source.name, "target": self.target.name,
            "source_size": len(self.source), "target_size": len(self.target),
            "shared": len(self.shared), "specials_mapped": len(self.specials),
            "new": len(self.new), "new_text": len(self.new_text), "new_special": len(self.new_special),
            "unused": len(self.unused),
        }
