"""Run ByteSampler (Hayase et al. 2025, github.com/SewoongLab/byte-sampler) on a job that
`benchmarks/byte_lm.py --parts bytesampler` writes, in ByteSampler's own venv (it needs
transformers 4.53.x; this file imports nothing from tokensurgery).

Job (JSON): {"model_dir", "start_token", "prompt", "stream_text", "prefixes": [...]} with
byte strings as latin-1 text. Output (JSON): next-byte log-probabilities (bytes 0..255 and
end = 256, normalised) after every stream step and for every prefix, with timings.

Set up once (see the benchmark's docstring):
    python -m venv /tmp/bs/venv && /tmp/bs/venv/bin/pip install torch==2.13.0 transformers==4.53.1 \
        accelerate ahocorasick-rs pyicu-wheels pysimdjson tokenizers tqdm
    /tmp/bs/venv/bin/pip install --no-deps -e <ByteSampler checkout>
    /tmp/bs/venv/bin/python benchmarks/bytesampler_worker.py JOB.json OUT.json
"""

from __future__ import annotations

import json
import sys
import time

import torch


def main() -> None:
    from byte_sampling import ByteConditioning
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

    job = json.loads(open(sys.argv[1]).read())
    raw = lambda s: s.encode("latin-1")  # noqa: E731
    torch.manual_seed(0)
    start = time.time()
    # a folder written by transformers 5 keeps rope_theta under "rope_parameters", which 4.53 does
    # not read (it would fall back to its default theta: another model); hand it over explicitly
    config = json.loads(open(job["model_dir"] + "/config.json").read())
    extra = {"rope_theta": config["rope_parameters"]["rope_theta"]} if "rope_parameters" in config else {}
    model = AutoModelForCausalLM.from_pretrained(job["model_dir"], torch_dtype=torch.float32, **extra).eval()
    if extra:
        assert model.config.rope_theta == extra["rope_theta"], "rope_theta not taken"
    # the same start token as ByteLM: ByteSampler starts every text with the tokenizer's BOS
    tok = PreTrainedTokenizerFast(tokenizer_file=job["model_dir"] + "/tokenizer.json", bos_token=job["start_token"],
                                  eos_token=job["start_token"])
    bc = ByteConditioning(model, tokenizer=tok)
    out = {"load_seconds": time.time() - start, "bos": bc.bos}

    def dist(sampler) -> list[float]:
        return torch.log_softmax(sampler.get_dists()[0].double(), -1).tolist()

    with torch.inference_mode():
        sampler = bc.get_bytewise_sampler(batch_size=1)
        sampler.add_context([raw(job["prompt"])])
        dist(sampler)  # warm-up step, not timed (threads, first call)
        sampler = bc.get_bytewise_sampler(batch_size=1)
        sampler.add_context([raw(job["prompt"])])
        steps, t0 = [], time.time()
        for b in raw(job["stream_text"]):
            steps.append(dist(sampler))
            sampler.add_context([bytes([b])])
        out["stream_seconds"] = time.time() - t0
        out["stream"] = steps
        prefixes, times = [], []
        for p in job["prefixes"]:
            t0 = time.time()
            sampler = bc.get_bytewise_sampler(batch_size=1)
            sampler.add_context([raw(p)])
            prefixes.append(dist(sampler))
            times.append(time.time() - t0)
        out["prefixes"], out["prefix_seconds"] = prefixes, times
    out["torch_threads"] = torch.get_num_threads()
    import transformers

    out["transformers"] = transformers.__version__
    open(sys.argv[2], "w").write(json.dumps(out))


if __name__ == "__main__":
    main()
