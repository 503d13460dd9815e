"""Regenerate the notebook recipes from the cell sources below (run: python examples/make_notebooks.py)."""

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).parent

CORE = [
    new_markdown_cell("""# The shared core: vocabularies, vocabulary maps, checkpoints and bits per byte

Everything in tokensurgery compares tokenizers through the **surface bytes** of their tokens.
This recipe loads the two bundled models (SmolLM2-135M and Gemma-3-270M, imported once from their
GGUF files into a cache), maps Gemma-3's vocabulary onto SmolLM2's and back, writes a patched
checkpoint, and measures bits per byte. Set `MAX_BYTES` higher for a more precise figure."""),
    new_code_cell("""MAX_BYTES = 1500  # bytes of text scored per language (small so the recipe runs fast)

from tokensurgery import VocabMap, open_vocabulary
from tokensurgery.assets import corpus_text
from tokensurgery.inputs import open_model

smol_dir = open_model("smollm2-135m")   # imports the GGUF once, then reuses the cache
gemma_dir = open_model("gemma3-270m")
smol, gemma = open_vocabulary(smol_dir), open_vocabulary(gemma_dir)
smol.summary(), gemma.summary()"""),
    new_markdown_cell("""## Surface bytes

`Ġhello` (byte-level BPE) and `▁hello` (SentencePiece) are the same bytes `b" hello"`.
Tokens that are not valid UTF-8 alone (pieces of a multi-byte character) are first-class."""),
    new_code_cell("""for vocab in (smol, gemma):
    ids = vocab.encode("Größe 漢字")
    print(vocab.family, [vocab.tokens[i] for i in ids], [vocab.surface[i] for i in ids])
    assert vocab.decode_bytes(ids) == "Größe 漢字".encode()"""),
    new_markdown_cell("""## VocabMap: shared, special and new tokens

The *light* pair gives Gemma-3 SmolLM2's tokenizer (few new tokens), the *heavy* pair gives
SmolLM2 Gemma-3's (about 210k new tokens). New tokens are decomposed into the base's pieces."""),
    new_code_cell("""light = VocabMap.build(gemma, smol)   # base = Gemma-3, target = SmolLM2's tokenizer
heavy = VocabMap.build(smol, gemma)   # base = SmolLM2, target = Gemma-3's tokenizer
print(light.summary())
print(heavy.summary())
for t in heavy.new_text[1000:1005]:
    print(repr(gemma.surface[t]), "->", [smol.tokens[i] for i in heavy.decompose(t)])"""),
    new_markdown_cell("""## Bits per byte

The tokenizer-independent quality figure every module reports. Gemma-3's tokenizer adds `<bos>`,
which the evaluation keeps."""),
    new_code_cell("""from tokensurgery.evaluate import load_causal_lm, score_text

rows = []
for name, folder in [("smollm2-135m", smol_dir), ("gemma3-270m", gemma_dir)]:
    model, tok = load_causal_lm(folder)
    for lang in ("en", "de"):
        s = score_text(model, tok, corpus_text(lang, MAX_BYTES), name=lang, progress=False)
        rows.append((name, lang, round(s.bits_per_byte, 3), round(s.tokens_per_byte, 3)))
    del model
rows"""),
    new_markdown_cell("""## Writing a patched checkpoint

The writer streams the base's tensors, swaps the embedding matrices, and writes config,
tokenizer, generation config and a model card atomically. With the base's own embeddings and
tokenizer it reproduces the base exactly."""),
    new_code_cell("""import tempfile, torch
from pathlib import Path
from transformers import AutoModelForCausalLM
from tokensurgery.checkpoint import NewEmbeddings, load_embeddings, write_patched_checkpoint
from tokensurgery.model_card import model_card

emb = load_embeddings(smol_dir)
out = Path(tempfile.mkdtemp()) / "smollm2-copy"
card = model_card("SmolLM2 copy", "smollm2-135m", {"base": "smollm2-135m"}, "identity", {})
write_patched_checkpoint(smol_dir, out, NewEmbeddings(emb.input), smol_dir, {"eos": smol.roles["eos"]}, card)
a = AutoModelForCausalLM.from_pretrained(smol_dir)
b = AutoModelForCausalLM.from_pretrained(out)
x = torch.tensor([smol.encode("The quick brown fox")])
with torch.no_grad():
    assert torch.equal(a(x).logits, b(x).logits)
sorted(p.name for p in out.iterdir())"""),
]

TRANSPLANT = [
    new_markdown_cell("""# Tokenizer transplantation (OMP) and its baselines

Give Gemma-3-270M the tokenizer of SmolLM2-135M without training (the *light* pair: ~3k donor
tokens Gemma-3 lacks). Shared tokens keep Gemma-3's rows; the others are solved by Orthogonal
Matching Pursuit in SmolLM2's embedding space and the coefficients applied to Gemma-3's rows.
The same thing from the shell: `tokensurgery transplant gemma3-270m smollm2-135m OUT`.
Settings here are small so the recipe runs in a few minutes on a CPU."""),
    new_code_cell("""MAX_BYTES = 1500  # bytes of text scored per language
import tempfile
from pathlib import Path
from tokensurgery.transplant import TransplantOptions, transplant, evaluate_transplant
from tokensurgery.assets import corpus_path

work = Path(tempfile.mkdtemp())
result = transplant("gemma3-270m", "smollm2-135m", work / "gemma-smoltok",
                    TransplantOptions(method="omp", k=64, candidates=128), progress=False)
result.summary()"""),
    new_markdown_cell("""Gemma-3 was trained with `<bos>` in front of every text; SmolLM2's tokenizer adds none, so
the transplant configures the new tokenizer to add SmolLM2's BOS token (carrying Gemma-3's `<bos>`
row). The notes say so, and so does the model card."""),
    new_code_cell("""print(*result.notes, sep="\\n")
print((result.out / "README.md").read_text()[:1200])"""),
    new_markdown_cell("""## Plain transformers loads the result"""),
    new_code_cell("""from transformers import AutoModelForCausalLM, AutoTokenizer
model = AutoModelForCausalLM.from_pretrained(result.out)
tok = AutoTokenizer.from_pretrained(result.out)
ids = tok("The weather today is", return_tensors="pt")
out = model.generate(**ids, max_new_tokens=15, do_sample=False)
tok.decode(out[0], skip_special_tokens=True)"""),
    new_markdown_cell("""## Bits per byte: base with its own tokenizer vs. the transplant, and one baseline

`evaluate_transplant` scores both on the same bytes and adds the table to the model card."""),
    new_code_cell("""files = [corpus_path("en"), corpus_path("py")]
scores = {"omp": evaluate_transplant(result, files, max_bytes=MAX_BYTES, progress=False)}
fvt = transplant("gemma3-270m", "smollm2-135m", work / "gemma-fvt", TransplantOptions(method="fvt"), progress=False)
scores["fvt"] = evaluate_transplant(fvt, files, max_bytes=MAX_BYTES, progress=False)
for method, table in scores.items():
    for text, (before, after) in table.items():
        print(f"{method:4s} {text:12s} base {before:.3f} -> {after:.3f}")"""),
]


BYTES = [
    new_markdown_cell("""# Exact byte-level probabilities from a tokenized model

`ByteLM` reads a causal LM and its tokenizer as a model over **bytes**: for any byte prefix, even one
that ends inside a token or inside a UTF-8 character, it gives the exact distribution of the next
byte (plus end of text), summing over every valid token sequence that covers the prefix. No
training. This recipe scores text, looks at prompt boundaries, generates, and combines two models
with different tokenizers. Keep `N` small on a laptop CPU."""),
    new_code_cell("""N = 400  # bytes of text scored per call (small so the recipe runs fast)

import numpy as np
from tokensurgery.assets import corpus_text
from tokensurgery.byte_models import ByteLM, ensemble

smol = ByteLM.from_pretrained("smollm2-135m")
print(smol.vocab.family, "start token:", smol.vocab.tokens[smol.start], "end token:", smol.vocab.tokens[smol.eos])"""),
    new_markdown_cell("""## The next byte, anywhere

A prompt ending inside a word (`Fra`) or inside a character (`Stra\\xc3`, the first byte of `ß`)
still gets a proper distribution: index 256 is end-of-text."""),
    new_code_cell("""for prefix in [b"The capital of Fra", b"Die Stra\\xc3", b"def fibonacci(n):\\n    ret"]:
    lp = smol.next_byte_logprobs(prefix)
    top = np.argsort(-lp)[:3]
    print(prefix, [(bytes([b]) if b < 256 else "EOS", round(float(np.exp(lp[b])), 4)) for b in top])
    assert abs(np.exp(lp).sum() - 1) < 1e-9"""),
    new_markdown_cell("""## Scoring: bits per byte from a few batched calls

All branches of a known text are evaluated together with tree attention, so scoring costs a
handful of model calls. The byte-level total equals the token-level log-likelihood of the
tokenizer's own encoding plus `renormalisation` (the mass of non-canonical encodings pruned on the
way)."""),
    new_code_cell("""text = corpus_text("en", N)
score = smol.score(text, eos=True)
print(f"{len(score.logprobs)} bytes, {score.bits_per_byte:.3f} bits/byte, renormalisation {score.renormalisation:.4f} nats")"""),
    new_markdown_cell("""## Prompt boundaries

A prompt cut mid-word is a problem for token-level generation: its last token is one the
tokenizer would never produce there. `heal` returns the bytes that finish the cut token, drawn
from the exact distribution; `generate` does that and then samples tokens as usual."""),
    new_code_cell("""for prompt in ["The capital of Fra", "Once upon a time, there was a", "import num"]:
    print(repr(prompt), "->", smol.heal(prompt), "|", repr(smol.generate(prompt, max_new_bytes=40, temperature=0)))"""),
    new_markdown_cell("""## Streaming and ensembles across tokenizers

`stream` keeps the cover tree alive while bytes arrive. Because both models speak bytes, SmolLM2
(byte-level BPE) and Gemma-3 (SentencePiece with byte fallback) combine directly."""),
    new_code_cell("""gemma = ByteLM.from_pretrained("gemma3-270m")
text = corpus_text("de", N)
pair = [smol, gemma]
for name, model in [("smollm2", smol), ("gemma3", gemma), ("mix", ensemble(pair, "mix")), ("product", ensemble(pair, "product"))]:
    print(f"{name:8s} {model.score(text).bits_per_byte:.3f} bits/byte on German")
print(repr(ensemble(pair).generate("Der Hund", max_new_bytes=24, seed=0)))"""),
]

HYPERNET = [
    new_markdown_cell("""# A ZeTT hypernetwork: embeddings for any tokenizer, no donor model

A hypernetwork trained for a base model predicts the embeddings of any token from the pieces
the base's own tokenizer splits it into. This recipe trains one for SmolLM2-135M for a few steps
(the real run: `tokensurgery hypernet train smollm2-135m OUT --max-minutes 60`), gives SmolLM2
Mistral's v3 SentencePiece tokenizer with it, and compares bits per byte with FVT.
Raise `STEPS` and `MAX_BYTES` for real numbers."""),
    new_code_cell("""STEPS, MAX_BYTES = 4, 1500

import importlib.util
from pathlib import Path

from tokensurgery import VocabMap, open_vocabulary
from tokensurgery.assets import corpus_text
from tokensurgery.inputs import open_model, vocabulary_of_folder
from tokensurgery.checkpoint import load_embeddings
from tokensurgery.hypernets import Hypernet, TrainConfig, bundled_corpus, predict_embeddings, train

base_dir = open_model("smollm2-135m")
config = TrainConfig(steps=STEPS, warmup_steps=2, batch_size=2, seq_len=64, vocab_size=4096, negatives=256,
                     identity_batch=256)
result = train("smollm2-135m", bundled_corpus(), "hypernet-smollm2", config, force=True, progress=False)
print(f"{result.steps_done} steps in {result.seconds:.0f}s;", {k: round(v, 3) for k, v in result.history[-1].items()
                                                              if k in ("lm", "aux", "tokens_per_byte")})"""),
    new_markdown_cell("""## Pieces

Each new token is split by SmolLM2's tokenizer, word-start aware; the hypernetwork reads those
pieces' embeddings. Bytes SmolLM2 cannot spell get learned fallback vectors."""),
    new_code_cell("""mistral = open_vocabulary(Path(importlib.util.find_spec("mistral_common").origin).parent / "data"
                          / "mistral_instruct_tokenizer_240323.model.v3")
smol = vocabulary_of_folder(base_dir)
vm = VocabMap.build(smol, mistral)
print(vm.summary())
for t in vm.new_text[:5]:
    print(repr(mistral.tokens[t]), "->", [smol.tokens[p] for p in vm.decompose(t)])"""),
    new_markdown_cell("""## Predict every row and compare with FVT

`predict_embeddings` works in blocks (bounded memory for 200k+ vocabularies). The output head
gives the model its own output matrix, so the patched model is untied."""),
    new_code_cell("""import torch
from tokensurgery.evaluate import load_model, score_text
from tokensurgery.transplant import TransplantOptions, new_embeddings

base_emb = load_embeddings(base_dir)
net = Hypernet.from_pretrained("hypernet-smollm2", base_emb)
hyper = predict_embeddings(net, vm, progress=False)
fvt = new_embeddings(base_emb, None, vm, TransplantOptions(method="fvt"), progress=False).embeddings

text = corpus_text("en", MAX_BYTES)
for name, new in [("hypernet", hyper), ("fvt", fvt)]:
    model = load_model(base_dir)
    model.resize_token_embeddings(new.input.shape[0], mean_resizing=False)
    model.get_input_embeddings().weight.data.copy_(new.input)
    if new.output is not None:
        model.lm_head.weight = torch.nn.Parameter(new.output.clone())
    print(f"{name:9s} {score_text(model, mistral, text, progress=False).bits_per_byte:.3f} bits/byte")"""),
    new_markdown_cell("""## Write the patched checkpoint

The same from the command line: `tokensurgery hypernet apply hypernet-smollm2 smollm2-135m TOKENIZER OUT`,
or `tokensurgery transplant smollm2-135m DONOR OUT --method hypernet --hypernet hypernet-smollm2`
(which copies the rows of shared tokens)."""),
    new_code_cell("""from transformers import AutoModelForCausalLM, AutoTokenizer
from tokensurgery.hypernets import apply

tokenizer_file = Path(importlib.util.find_spec("mistral_common").origin).parent / "data" / "mistral_instruct_tokenizer_240323.model.v3"
out = apply("hypernet-smollm2", "smollm2-135m", tokenizer_file, "smollm2-mistral-v3", force=True, progress=False)
model, tok = AutoModelForCausalLM.from_pretrained(out.out), AutoTokenizer.from_pretrained(out.out)
ids = tok("The old house", return_tensors="pt").input_ids
print(out.rows, "rows;", tok.decode(model.generate(ids, max_new_tokens=8, do_sample=False)[0]))"""),
]


HEAL = [
    new_markdown_cell("""# Heal a transplanted model (cross-tokenizer distillation)

A transplant gives a model a new tokenizer without training, and it ends up behind its base.
`heal` trains it briefly on text. The default loss, `lm`, is plain next-token loss (it measured
best per CPU-minute); the teacher losses use the base through its own tokenizer. This recipe
uses one of them, `alm` (Approximate Likelihood Matching): on every text chunk whose
boundaries both tokenizations share, the student's probability of the chunk is pulled
towards the teacher's.
From the shell: `tokensurgery heal OUT_OF_TRANSPLANT HEALED --teacher gemma3-270m --max-minutes 10`.
Settings here are tiny (a few steps) so the recipe runs in a few minutes on a CPU; see
`results/heal_light.md` for what longer runs do."""),
    new_code_cell("""STEPS, MAX_BYTES = 3, 800  # raise both for a real run
import tempfile
from pathlib import Path
from tokensurgery.transplant import TransplantOptions, transplant

work = Path(tempfile.mkdtemp())
moved = transplant("gemma3-270m", "smollm2-135m", work / "gemma-smoltok", TransplantOptions(method="fvt"),
                   progress=False)
moved.out"""),
    new_markdown_cell("""## Chunks both tokenizations share

ALM compares the two models only where both tokenizers end a token at the same byte."""),
    new_code_cell("""from tokensurgery import open_vocabulary
from tokensurgery.alignment import align, token_ends
from tokensurgery.inputs import open_model

student_vocab, teacher_vocab = open_vocabulary(moved.out), open_vocabulary(open_model("gemma3-270m"))
text = "Die Hauptstadt von Deutschland ist Berlin."
s, t = student_vocab.encode(text), teacher_vocab.encode(text)
a = align(token_ends(student_vocab, s, text.encode()), token_ends(teacher_vocab, t, text.encode()))
for c in range(a.n_chunks):
    print(c, [student_vocab.tokens[i] for i, k in zip(s, a.chunk_a.tolist()) if k == c],
          [teacher_vocab.tokens[i] for i, k in zip(t, a.chunk_b.tolist()) if k == c])"""),
    new_markdown_cell("""## Heal, scoring held-out text before and after

`heal` writes a plain checkpoint (the trained tensors replaced), its model card extended by the
healing record, and the run's checkpoint for `resume=True`."""),
    new_code_cell("""from tokensurgery.assets import corpus_path
from tokensurgery.corpus import Corpus
from tokensurgery.heal import HealConfig, heal

config = HealConfig(steps=STEPS, batch_size=1, seq_len=64, lr=3e-4, lr_warmup=1, loss="alm", train="embeddings")
res = heal(moved.out, work / "healed", Corpus.from_paths(["bundled"]), config, teacher="gemma3-270m",
           eval_files=[corpus_path("en")], max_bytes=MAX_BYTES, progress=False)
print(res.steps_done, "steps;", "before", res.before, "after", res.after, "teacher", res.teacher)
print((work / "healed" / "README.md").read_text().split("## Healing")[1][:800])"""),
    new_markdown_cell("""## Plain transformers loads the healed model"""),
    new_code_cell("""from transformers import AutoModelForCausalLM, AutoTokenizer
model = AutoModelForCausalLM.from_pretrained(work / "healed")
tok = AutoTokenizer.from_pretrained(work / "healed")
out = model.generate(**tok("Die Hauptstadt von Deutschland ist", return_tensors="pt"), max_new_tokens=8, do_sample=False)
tok.decode(out[0], skip_special_tokens=True)"""),
]


BYTE_MODELS = [
    new_markdown_cell("""# Byte-level models: word splitter, Byte2Word, hierarchical and flat byte LMs, retrofits

A hierarchical byte model reads raw bytes, splits them into words, pools each word's bytes into
one vector (Byte2Word), runs a word-level transformer over those vectors, and spells the next
word byte by byte with a small decoder. Its backbone sequence is about 4-5x shorter than a
byte-per-position model's, and it has no vocabulary to break under typos.
This recipe trains tiny models for a few steps; the real runs are
`tokensurgery byte-model train hierarchical OUT --max-minutes 20 --lr-by-time` and
`python benchmarks/byte_models.py` / `python benchmarks/byte_retrofit.py`. Raise `STEPS` for real numbers."""),
    new_code_cell(r"""STEPS, EVAL_BYTES = 30, 1500

from tokensurgery.byte_models.trainable.splitter import split_fixed, split_whitespace, split_words

data = "The cat's  hat, naïve café — 漢字!\n    return x[0]".encode() + b"\xff\xfe"
for split in (split_words, split_whitespace, split_fixed):
    pieces = split(data)
    assert b"".join(pieces) == data  # exact round trip, invalid UTF-8 included
    print(f"{split.__name__:17s}", pieces)"""),
    new_markdown_cell("""## Train a hierarchical model

Byte2Word encoder -> a 2-layer Llama over words -> a byte decoder. Words of equal length are
stacked into dense blocks, so nothing is padded. The trainer checkpoints, resumes exactly, and
runs unchanged under `torchrun`."""),
    new_code_cell("""import torch
from tokensurgery.assets import corpus_text
from tokensurgery.byte_models.trainable.score import score_bytes
from tokensurgery.byte_models.trainable.hierarchical import HierarchicalConfig, HierarchicalLM
from tokensurgery.byte_models.trainable.train import ByteTrainConfig, load_byte_model, train_bytes
from tokensurgery.corpus import bundled_corpus

torch.manual_seed(0)
corpus = bundled_corpus()
config = HierarchicalConfig(d_byte=64, d_model=128, backbone={"num_hidden_layers": 2, "num_attention_heads": 2,
                                                              "num_key_value_heads": 2, "intermediate_size": 341})
model = HierarchicalLM(config)
result = train_bytes(model, corpus, "hat-tiny", ByteTrainConfig(steps=STEPS, batch_size=4, context_bytes=256, lr=3e-3,
                                                                lr_warmup=5), force=True, progress=False)
print(f"{result.steps_done} steps in {result.seconds:.0f}s, loss {result.history[0]['loss']:.2f} -> {result.history[-1]['loss']:.2f}")
held_out = corpus_text("en", EVAL_BYTES).encode()  # the bundled training corpus leaves this out
score = score_bytes(model, held_out)
print(f"{score.bits_per_byte:.3f} bits/byte, {score.positions_per_byte:.3f} backbone positions per byte")"""),
    new_markdown_cell("""## Load it back and generate

Generation runs byte by byte; a word ends when the decoder says end-of-word or where the
splitter would cut."""),
    new_code_cell("""again = load_byte_model("hat-tiny")
print(repr(again.generate(b"The old house", max_new_bytes=40, temperature=0.8, seed=0)))"""),
    new_markdown_cell("""## Byte2Word as a drop-in input layer

One vector per word from its bytes, in place of a subword embedding table: compare the
parameter counts."""),
    new_code_cell("""from tokensurgery.byte_models.trainable.hierarchical import Byte2Word

words = [b" The", b" cat", b" sat", b"."]
enc = Byte2Word(d_byte=128, d_out=576, heads=4, layers=1, max_len=16)
data = torch.tensor(list(b"".join(words)))
lengths = torch.tensor([len(w) for w in words])
print(enc(data, lengths).shape, f"{sum(p.numel() for p in enc.parameters()) / 1e6:.2f}M parameters",
      f"vs {49152 * 576 / 1e6:.1f}M in SmolLM2's embedding table")"""),
    new_markdown_cell("""## The flat baseline with a MrT5 delete gate

A byte-per-position Llama; with `gate_layer` set, a learned gate after that layer removes
positions from what later layers attend to (soft while training, hard at evaluation)."""),
    new_code_cell("""from tokensurgery.byte_models.trainable.flat import FlatByteLM, FlatConfig

flat = FlatByteLM(FlatConfig(d_model=128, gate_layer=1, gate_alpha=0.5, backbone={
    "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 2, "intermediate_size": 341}))
train_bytes(flat, corpus, "flat-gate", ByteTrainConfig(steps=STEPS, batch_size=4, context_bytes=256, lr=3e-3, lr_warmup=5),
            force=True, progress=False)
score = score_bytes(flat, held_out)
print(f"{score.bits_per_byte:.3f} bits/byte, keys kept after the gate: {score.positions_per_byte:.2f} per byte")"""),
    new_markdown_cell("""## Retrofit SmolLM2-135M

The hierarchical model can take a pretrained subword model's transformer as its word backbone
(frozen). Stage `distill` teaches the byte encoder to put each word where SmolLM2's own
embedding of it is; stage `decoder` trains the byte decoder on the frozen encoder + backbone;
stage `all` trains both. CLI: `tokensurgery byte-model train hierarchical OUT --from-subword smollm2-135m --stage distill`,
then `--init OUT --stage decoder`."""),
    new_code_cell("""import random

retro = HierarchicalLM.from_subword("smollm2-135m", HierarchicalConfig(d_byte=64))
batch = [retro.words_of(corpus_text("en", 400).encode())[:48]]
print("distill loss before", round(retro.distill_loss(batch).item(), 3))
opt = torch.optim.AdamW([p for p in retro.parameters() if p.requires_grad], lr=3e-3)
for step in range(STEPS):
    loss, _ = retro.text_loss([corpus.window(random.Random(step), 400).encode()], stage="distill")
    opt.zero_grad(); loss.backward(); opt.step()
print("distill loss after", round(retro.distill_loss(batch).item(), 3))
with torch.no_grad():
    print(f"next-byte loss with the frozen SmolLM2 backbone: {retro.loss(batch)[0].item():.2f} nats per symbol")"""),
]


DYNAMIC = [
    new_markdown_cell("""# Dynamic batch-level merging: shorter sequences per batch

Each batch of texts is tokenized by the model's own tokenizer; then the most frequent adjacent
token pair *over the batch* becomes a new token, again and again, never across a pre-token
(word) boundary. New tokens get embedding rows from a hypernetwork trained for the model, or
FVT (the mean of the rows they join) without one; the model reads fewer positions.
Set `PIECES` higher for a more precise figure."""),
    new_code_cell("""PIECES = 8  # texts of up to 256 bytes in the batch (small so the recipe runs fast)

from tokensurgery.assets import corpus_text
from tokensurgery.evaluate import load_causal_lm
from tokensurgery.hypernets.dynamic import BatchMerger, DynamicModel, chunk_text, score_batch
from tokensurgery.inputs import open_model

model, vocab = load_causal_lm(open_model("smollm2-135m"))
texts = chunk_text(corpus_text("de", 256 * PIECES), 256)[:PIECES]
dm = DynamicModel(model)                      # DynamicModel(model, hypernet="hn-smollm2") with a trained one
merger = BatchMerger(vocab, n_base=dm.n_base)  # boundary="pretokens" (default), "word" or "sentence"
batch = merger(texts, reduction=0.10)          # or merges=N
print(f"{batch.tokens_before} -> {batch.tokens_after} tokens ({batch.reduction:.1%} fewer, "
      f"{batch.reduction_to_limit:.0%} of the way to one token per word) with {batch.merges} merges")
print([t.surface.decode("utf-8", "replace") for t in batch.new_tokens[:12]])"""),
    new_markdown_cell("""## What it costs in bits per byte

Mode A merges the first half of each text and scores the second half in the model's own
tokens (exactly comparable with the plain model); mode B scores the whole text in merged
tokens over the vocabulary plus the batch's new tokens."""),
    new_code_cell("""score = score_batch(dm, merger, texts, reduction=0.10)
s = score.summary()
print(f"mode A {s['bpb_a']:.3f} vs {s['base_bpb_a']:.3f} bits/byte ({s['rel_a']:+.1%}); "
      f"mode B {s['bpb_b']:.3f} vs {s['base_bpb_b']:.3f} ({s['rel_b']:+.1%})")
print(f"merging took {score.merge_seconds * 1e3:.1f} ms, the forward {score.forward_seconds:.2f}s "
      f"(plain: {score.base_forward_seconds:.2f}s)")
assert score_batch(dm, merger, texts, merges=0).bits_b == score_batch(dm, merger, texts, merges=0).base_bits_b"""),
    new_markdown_cell("""The command line does the same over whole files:
`tokensurgery dynamic score smollm2-135m --lang en --lang multilingual --reduction 0.1 [--hypernet DIR] [--json out.json]`."""),
]


def main():
    meta = {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}}
    nbformat.write(new_notebook(cells=CORE, metadata=meta), HERE / "01_core_vocabulary_and_eval.ipynb")
    nbformat.write(new_notebook(cells=TRANSPLANT, metadata=meta), HERE / "02_transplant.ipynb")
    nbformat.write(new_notebook(cells=BYTES, metadata=meta), HERE / "03_byte_level_probabilities.ipynb")
    nbformat.write(new_notebook(cells=HYPERNET, metadata=meta), HERE / "04_hypernetwork.ipynb")
    nbformat.write(new_notebook(cells=BYTE_MODELS, metadata=meta), HERE / "05_byte_models.ipynb")
    nbformat.write(new_notebook(cells=HEAL, metadata=meta), HERE / "06_heal.ipynb")
    nbformat.write(new_notebook(cells=DYNAMIC, metadata=meta), HERE / "07_dynamic_merging.ipynb")


if __name__ == "__main__":
    main()
