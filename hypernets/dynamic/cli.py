"""`tokensurgery dynamic score`: dynamic batch-level merging on a model (registered by plugin.py)."""

from __future__ import annotations

from pathlib import Path

import click

from tokensurgery.cli import options

BOUNDARIES = ("pretokens", "word", "sentence")  # = merger.BOUNDARIES; literal so --help does not import torch


@click.group("dynamic")
def dynamic_group() -> None:
    """Dynamic tokenization: merge each batch's most frequent token pairs into new tokens
    (embedded by a hypernetwork, or FVT) so the model reads shorter sequences."""


@dynamic_group.command("score", cls=options.grouped(
    Texts=["texts", "langs", "max_bytes", "chunk_bytes"],
    Merging=["merges", "reduction", "boundary", "whole_chars", "tail", "batch_size"],
    New_tokens=["hypernet", "cache_size"],
    Run=["dtype", "device", "json_out"]))
@click.argument("model")
@options.texts(default_max_bytes=None)
@click.option("--chunk-bytes", default=512, show_default=True,
              help="Each text is cut into pieces of at most this many bytes (at whitespace); a batch holds "
                   "--batch-size pieces.")
@options.merge_budget
@options.boundary(BOUNDARIES)
@options.whole_chars
@options.tail
@options.batch_size(32)
@options.hypernet
@click.option("--cache-size", default=8192, show_default=True, help="New-token rows kept between batches (LRU).")
@options.dtype()
@options.device
@options.json_out
def dynamic_score(model: str, texts: tuple[Path, ...], langs: tuple[str, ...], max_bytes: int | None, chunk_bytes: int,
                  merges: int | None, reduction: float | None, boundary: str, whole_chars: bool, tail: int,
                  batch_size: int, hypernet: Path | None, cache_size: int, dtype: str, device: str,
                  json_out: Path | None) -> None:
    """Tokens per byte and bits per byte of MODEL with and without dynamic merging.

    Bits per byte in two modes: A (prefill) merges the first half of each text and scores the
    second half in MODEL's own tokens, exactly comparable with MODEL; B scores the whole text
    in the merged tokens over MODEL's vocabulary plus the batch's new tokens (an upper bound).
    Prefill speed: bytes per second of the merged batches (merging and new-token rows
    included) against MODEL on the same texts.
    """
    from tokensurgery.evaluate import load_causal_lm, read_text_file
    from tokensurgery.inputs import open_model
    from tokensurgery.progress import status

    from .embed import DynamicModel
    from .merger import BatchMerger, check_budget
    from .score import DynamicScore, chunk_text, score_texts

    check_budget(merges, reduction)
    files = options.text_files(texts, langs, required=True)
    folder = open_model(model)
    with status(f"loading {model}"):
        lm, vocab = load_causal_lm(folder, dtype=dtype, device=device)
    dm = DynamicModel(lm, hypernet=str(hypernet) if hypernet else None, cache_size=cache_size, device=device)
    merger = BatchMerger(vocab, boundary=boundary, n_base=dm.n_base, whole_chars=whole_chars)
    results = {}
    for f in files:
        pieces = chunk_text(read_text_file(f, max_bytes), chunk_bytes)
        results[Path(f).name] = score_texts(dm, merger, pieces, batch_size, merges, reduction, name=Path(f).name,
                                            tail=tail)
    overall = sum(results.values(), DynamicScore())
    rows = {**results, "overall": overall} if len(results) > 1 else results
    cache = dm.cache
    payload = {"model": model, "hypernet": str(hypernet) if hypernet else None, "merges": merges, "reduction": reduction,
               "boundary": merger.boundary, "whole_chars": whole_chars, "tail": tail, "batch_size": batch_size,
               "chunk_bytes": chunk_bytes, "max_bytes": max_bytes,
               "cache": {"size": cache.size, "capacity": cache.capacity, "hits": cache.hits, "misses": cache.misses,
                         "hit_rate": cache.hit_rate},
               "results": {name: s.summary() for name, s in rows.items()}}
    options.write_json(json_out, payload)
    if str(json_out) == "-":
        return
    click.echo(f"boundary {merger.boundary}; new-token rows: {'hypernetwork ' + str(hypernet) if hypernet else 'FVT'}; "
               f"cache {cache.size:,} rows, hit rate {cache.hit_rate:.0%}")
    header = (f"{'text':16s} {'tok/B':>6s} {'->':>6s} {'fewer':>6s} {'of max':>6s} | {'bpb A':>6s} {'base':>6s} "
              f"{'rise':>6s} | {'bpb B':>6s} {'base':>6s} {'rise':>6s} | {'B/s':>6s} {'base':>6s} {'merge':>6s} "
              f"{'rows':>6s}")
    click.echo(header)
    click.echo("-" * len(header))
    for name, s in rows.items():
        d = s.summary()
        click.echo(f"{name[:16]:16s} {d['tokens_per_byte_before']:6.3f} {d['tokens_per_byte_after']:6.3f} "
                   f"{d['reduction']:6.1%} {d['reduction_to_limit']:6.1%} | {d['bpb_a']:6.3f} {d['base_bpb_a']:6.3f} "
                   f"{d['rel_a']:+6.1%} | {d['bpb_b']:6.3f} {d['base_bpb_b']:6.3f} {d['rel_b']:+6.1%} | "
                   f"{d['prefill_bytes_per_s']:6.0f} {d['base_prefill_bytes_per_s']:6.0f} "
                   f"{d['merge_seconds']:5.2f}s {d['rows_seconds']:5.2f}s")


ANN = ("exact", "hnsw", "ivf")  # = generate.ANN; literal so --help does not import torch


@dynamic_group.command("grow", cls=options.grouped(Vocabulary=["corpus", "size"], New_tokens=["hypernet"],
                                                   Run=["device", "force"]))
@click.argument("model")
@click.argument("out", type=click.Path(path_type=Path))
@options.corpus
@click.option("--size", default=250_000, show_default=True,
              help="Tokens of the byte-level BPE learned on the corpus (those MODEL lacks become new tokens).")
@options.hypernet
@options.device
@options.force
def dynamic_grow(model: str, out: Path, corpus: tuple[str, ...], size: int, hypernet: Path | None, device: str,
                 force: bool) -> None:
    """Grow MODEL's vocabulary for `dynamic generate`: learn a large BPE vocabulary on the
    corpus and give every new token rows once (hypernetwork, or FVT); saved to OUT."""
    from tokensurgery.checkpoint import atomic_folder
    from tokensurgery.corpus import Corpus
    from tokensurgery.evaluate import load_causal_lm
    from tokensurgery.inputs import open_model
    from tokensurgery.progress import status

    from .embed import DynamicModel
    from .grow import grow

    texts = Corpus.from_paths(list(corpus)).texts
    lm, vocab = load_causal_lm(open_model(model), device=device)
    dm = DynamicModel(lm, hypernet=str(hypernet) if hypernet else None, device=device)
    with atomic_folder(out, force=force) as tmp:
        with status(f"learning {size:,} tokens on {sum(len(t) for _, t in texts):,} characters and predicting rows"):
            grown = grow(dm, vocab, (t for _, t in texts), size, name=model)
        grown.save(tmp)
    click.echo(f"wrote {out}: {len(grown.tokens):,} new tokens ({len(grown):,} with MODEL's) in {grown.seconds:.0f}s")


@dynamic_group.command("generate", cls=options.grouped(Generation=["max_new_bytes", "grown", "ann", "candidates"],
                                                       Prompt=["merges", "reduction", "boundary", "whole_chars", "tail",
                                                               "hypernet"],
                                                       Run=["device", "json_out"]))
@click.argument("model")
@click.argument("prompt")
@options.max_new_bytes(200)
@click.option("--grown", type=click.Path(path_type=Path), help="A grown vocabulary (`dynamic grow`); without it: "
              "MODEL's own vocabulary.")
@click.option("--ann", default="hnsw", show_default=True, type=click.Choice(ANN),
              help="Output layer: exact (every row), hnsw or ivf (FAISS index, exact rescoring of the candidates).")
@click.option("--rescore", "candidates", default=20, show_default=True,
              help="Rows the output layer's index returns; they are rescored exactly.")
@options.merge_budget
@options.boundary(BOUNDARIES)
@options.whole_chars
@options.tail
@options.hypernet
@options.device
@options.json_out
def dynamic_generate(model: str, prompt: str, max_new_bytes: int, grown: Path | None, ann: str, candidates: int,
                     merges: int | None, reduction: float | None, boundary: str, whole_chars: bool, tail: int,
                     hypernet: Path | None, device: str, json_out: Path | None) -> None:
    """Greedy continuation of PROMPT over MODEL's vocabulary plus a grown one, with a KV
    cache and an approximate-nearest-neighbour output layer.

    With --merges or --reduction the prompt is merged first (its own most frequent token
    pairs) and read with its new tokens' rows (--hypernet, or FVT); decoding goes on in
    MODEL's tokens."""
    import torch

    from tokensurgery.evaluate import load_causal_lm
    from tokensurgery.inputs import open_model

    from .embed import DynamicModel
    from ..model import fingerprint
    from .generate import OutputLayer, generate
    from .grow import GrownVocabulary
    from .merger import BatchMerger, check_budget

    check_budget(merges, reduction)
    if (tail or whole_chars) and merges is None and reduction is None:
        raise click.UsageError("--tail and --whole-chars shape how the prompt is merged: give --merges or --reduction")
    lm, vocab = load_causal_lm(open_model(model), device=device)
    dm = DynamicModel(lm, hypernet=str(hypernet) if hypernet else None, device=device)
    merger = BatchMerger(vocab, boundary=boundary, n_base=dm.n_base, whole_chars=whole_chars) \
        if merges is not None or reduction is not None else None
    big = GrownVocabulary.load(grown, n_base=dm.n_base, fingerprint=fingerprint(dm.head.weight.detach().float().cpu())) \
        if grown else None
    rows = dm.head.weight.detach().cpu()
    if big is not None:
        rows = torch.cat([rows, big.output.to(rows)])
    layer = OutputLayer(rows, ann, candidates)
    result = generate(dm, vocab, prompt, max_new_bytes, grown=big, layer=layer, merger=merger, merges=merges,
                      reduction=reduction, tail=tail)
    n = len(result.text)
    payload = {"model": model, "grown": str(grown) if grown else None, "ann": ann, "candidates": candidates,
               "text": result.text.decode("utf-8", "replace"), "bytes": n, "steps": result.steps,
               "grown_tokens_used": sum(t >= dm.n_base for t in result.tokens), "seconds": result.seconds,
               "bytes_per_second": n / result.seconds if result.seconds else 0.0, "index_seconds": layer.build_seconds,
               "prompt_tokens": result.prompt_tokens, "prompt_tokens_read": result.prompt_tokens_read}
    options.write_json(json_out, payload)
    if str(json_out) == "-":
        return
    click.echo(prompt + payload["text"])
    click.echo(f"-- {n} bytes in {result.steps} steps ({payload['grown_tokens_used']} grown tokens), "
               f"{payload['bytes_per_second']:.1f} B/s; index built in {layer.build_seconds:.1f}s", err=True)
    if merger is not None:
        click.echo(f"-- the prompt's {result.prompt_tokens} tokens read as {result.prompt_tokens_read} "
                   f"(merged in {result.merge_seconds * 1e3:.0f} ms)", err=True)
