#!/usr/bin/env bash
# Set up, then run the main job on the bundled models: import both GGUF checkpoints (cached),
# show how the vocabularies map, measure both models' bits per byte, and transplant SmolLM2's
# tokenizer onto Gemma-3-270M (OMP, no training) with a before/after evaluation and a report;
# then read SmolLM2 as an exact byte-level model: complete a prompt cut mid-word, and score
# German with a byte-level SmolLM2 + Gemma-3 ensemble.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/tokensurgery models
.venv/bin/tokensurgery inspect smollm2-135m gemma3-270m
.venv/bin/tokensurgery eval smollm2-135m --compare gemma3-270m --lang en --lang de --lang zh --max-bytes 8000
.venv/bin/tokensurgery transplant gemma3-270m smollm2-135m out/gemma3-270m-smollm2-tokenizer --force \
    --lang en --lang de --lang py --max-bytes 4000 --report out/gemma3-270m-smollm2-tokenizer.png
echo "transplanted checkpoint: out/gemma3-270m-smollm2-tokenizer (model card: its README.md)"
.venv/bin/tokensurgery bytes generate smollm2-135m 'def fibonacci(n):\n    ret' --escapes --temperature 0 --max-new-bytes 80
.venv/bin/tokensurgery bytes score smollm2-135m gemma3-270m --lang de --max-bytes 1500 --mode mix
