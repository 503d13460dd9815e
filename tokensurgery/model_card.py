"""The model card (README.md) every written checkpoint carries, through huggingface_hub.

The YAML metadata is `huggingface_hub.ModelCardData` (library, tags, `base_model` as a hub id
when one is known: bundled aliases map to their original hub models, local folders get none,
since the hub rejects a path there). The body records the inputs as given, the method and its
resolved parameters, measured quality and notes. Not handled: widget or eval-results metadata.
"""

from __future__ import annotations

from huggingface_hub import ModelCard, ModelCardData


def model_card(title: str, base: str, inputs: dict[str, str], method: str, parameters: dict, quality: str = "",
               notes: str = "") -> str:
    """The card's text: metadata, then inputs, method, parameters, quality and notes."""
    from .inputs import hub_id

    data = ModelCardData(library_name="transformers", tags=["tokensurgery"], base_model=hub_id(base))
    lines = [f"# {title}", "", "Written by [tokensurgery](https://pypi.org/project/tokensurgery/).", "", "## Inputs", ""]
    lines += [f"- **{k}**: `{v}`" for k, v in inputs.items()]
    lines += ["", "## Method", "", f"`{method}`", ""]
    if parameters:
        lines += ["| parameter | value |", "|---|---|"] + [f"| {k} | {v} |" for k, v in parameters.items()] + [""]
    if quality:
        lines += ["## Measured quality", "", quality.strip(), ""]
    if notes:
        lines += ["## Notes", "", notes.strip(), ""]
    return str(ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines)))
