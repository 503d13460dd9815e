"""`tokensurgery inspect`: one vocabulary, or how a second one maps onto it."""

from __future__ import annotations

import random
from pathlib import Path

import click

from . import options


@click.command()
@click.argument("a")
@click.argument("b", required=False)
@click.option("--samples", default=8, show_default=True, help="How many new tokens to show decomposed.")
@options.seed
@options.json_out
def inspect(a: str, b: str | None, samples: int, seed: int, json_out: Path | None) -> None:
    """Describe vocabulary A, or how B's tokens map onto A's (A = source/base, B = target/donor).

    A and B: a model (folder, .gguf, alias, hub id), a tokenizer folder, tokenizer.json,
    SentencePiece .model, Tekken .json or .tiktoken file."""
    from ..inputs import open_vocabulary
    from ..progress import status
    from ..vocab_map import VocabMap

    with status(f"reading {a}" + (f" and {b}" if b else "")):
        va = open_vocabulary(a)
        vb = open_vocabulary(b) if b is not None else None
    if vb is None:
        s = va.summary()
        options.write_json(json_out, s)
        if str(json_out) != "-":
            click.echo(_format_vocab(s))
        return
    vm = VocabMap.build(va, vb)
    s = {"source": va.summary(), "target": vb.summary(), "map": vm.summary()}
    rng = random.Random(seed)
    picks = rng.sample(vm.new_text, min(samples, len(vm.new_text)))
    s["samples"] = [{"target_token": vb.tokens[t], "bytes": repr(vb.surface[t]),
                     "source_pieces": [va.tokens[i] for i in vm.decompose(t)]} for t in picks]
    s["specials"] = [{"target": vb.tokens[t], "source": va.tokens[i], "how": vm.special_how[t]}
                     for t, i in vm.specials.items()]
    options.write_json(json_out, s)
    if str(json_out) == "-":
        return
    click.echo("source (A):\n" + _format_vocab(s["source"], "  "))
    click.echo("target (B):\n" + _format_vocab(s["target"], "  "))
    m = s["map"]
    click.echo(f"overlap: {m['shared']:,} shared tokens ({m['shared'] / max(m['target_size'], 1):.1%} of B), "
               f"{m['specials_mapped']} specials mapped, {m['new']:,} new in B "
               f"({m['new_text']:,} text, {m['new_special']} special), {m['unused']:,} unused placeholders")
    for sp in s["specials"]:
        click.echo(f"  special {sp['target']!r} <- {sp['source']!r} ({sp['how']})")
    click.echo("sample decompositions of new B tokens into A tokens:")
    for x in s["samples"]:
        click.echo(f"  {x['bytes']:28s} -> {x['source_pieces']}")


def _format_vocab(s: dict, indent: str = "") -> str:
    kinds = ", ".join(f"{v:,} {k}" for k, v in sorted(s["kinds"].items(), key=lambda kv: -kv[1]))
    roles = ", ".join(f"{r}={t!r}" for r, t in s["roles"].items())
    return (f"{indent}name: {s['name']}\n{indent}family: {s['family']}\n{indent}size: {s['size']:,} ({kinds})\n"
            f"{indent}tokens not valid UTF-8 alone: {s['not_utf8_alone']:,}\n{indent}roles: {roles or 'none'}\n"
            f"{indent}BOS added when encoding: {s['bos_added'] or 'no'}")
