"""What the hypernetwork package adds to the core: the `hypernet` transplant method and the
`tokensurgery hypernet` and `tokensurgery dynamic` commands (found through the `tokensurgery.plugins` entry point)."""

from __future__ import annotations

from tokensurgery.errors import TokenSurgeryError
from tokensurgery.plugins import FillMethod, register_command, register_fill_method


def _check(options) -> None:
    if not options.hypernet:
        raise TokenSurgeryError("--method hypernet needs a trained hypernetwork (--hypernet FOLDER)")


def _rows(base_emb, vm, filled: list[int], options, progress: bool) -> dict:
    """{"input": rows, "output": rows} for the filled ids, predicted by the hypernetwork
    (specials without a BASE counterpart and placeholders get the mean row); "output" is
    absent when the hypernetwork has no output head and BASE is tied."""
    import torch

    from .apply import predict_embeddings
    from .model import Hypernet

    net = Hypernet.from_pretrained(options.hypernet, base_emb).to(options.device)
    new = predict_embeddings(net, vm, n_rows=max(filled, default=-1) + 1, batch_size=options.block_size * 8,
                             only=filled, progress=progress)
    idx = torch.tensor(filled, dtype=torch.long)
    rows = {"input": new.input[idx]}
    if new.output is not None:
        rows["output"] = new.output[idx]
    elif not base_emb.tied:
        rows["output"] = new.input[idx]
    return rows


HYPERNET = FillMethod("hypernet", _rows, "rows predicted by a hypernetwork trained for BASE (--hypernet DIR)", _check)


def register() -> None:
    register_fill_method(HYPERNET)  # first: importing the CLI below builds `transplant --method` choices
    from .cli import hypernet_group
    from .dynamic.cli import dynamic_group

    register_command(hypernet_group)
    register_command(dynamic_group)
