#!/usr/bin/env bash
# Set up, then run the main job on the bundled models: import both GGUF checkpoints (cached),
# show how Gemma-3's vocabulary maps onto SmolLM2's, and measure both models' bits per byte.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/tokensurgery models
.venv/bin/tokensurgery inspect smollm2-135m gemma3-270m
.venv/bin/tokensurgery eval smollm2-135m --compare gemma3-270m --lang en --lang de --lang zh --max-bytes 8000
