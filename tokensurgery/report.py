"""PNG reports of a transplant: reconstruction-error histogram and bits per byte per text."""

from __future__ import annotations

from pathlib import Path

from .errors import TokenSurgeryError


def transplant_report(result, scores: dict[str, tuple[float, float]] | None, path: str | Path) -> Path:
    """Left: histogram of OMP's relative reconstruction errors in the donor space (if any).
    Right: bits per byte of BASE (own tokenizer) and the transplant per text (if evaluated)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise TokenSurgeryError("--report needs matplotlib (pip install matplotlib)") from None
    path = Path(path)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    if result.errors is not None and len(result.errors):
        ax1.hist(result.errors.numpy(), bins=60, color="#4477aa")
        ax1.set_xlabel("relative reconstruction error (donor space)")
        ax1.set_ylabel("tokens")
        ax1.set_title(f"{result.options.method}, k={result.options.k}: {len(result.errors):,} tokens")
    else:
        ax1.text(0.5, 0.5, f"method {result.options.method}: no reconstruction", ha="center", va="center")
        ax1.set_axis_off()
    if scores:
        names = list(scores)
        x = range(len(names))
        ax2.bar([i - 0.2 for i in x], [scores[n][0] for n in names], 0.4, label="base, own tokenizer", color="#999999")
        ax2.bar([i + 0.2 for i in x], [scores[n][1] for n in names], 0.4, label=f"transplant ({result.options.method})",
                color="#ee6677")
        ax2.set_xticks(list(x), names, rotation=20)
        ax2.set_ylabel("bits per byte")
        ax2.legend()
    else:
        ax2.text(0.5, 0.5, "no --eval text given", ha="center", va="center")
        ax2.set_axis_off()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
