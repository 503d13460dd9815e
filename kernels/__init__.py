"""tokensurgery.kernels: the hot loops, in pure torch (CPU always; the same code runs on a GPU),
and a few CPU loops in numba for decoding calls of a few tokens.

omp.py (batched Orthogonal Matching Pursuit with screening and ridge), surface_index.py (tokens
sorted by surface bytes, for cover-tree walks), segments.py (segment softmax/sum and words
grouped by length for the hierarchical byte models), merges.py (batch-level BPE merging),
narrow_linear.py (float32 products over a few rows on CPU: W @ X^T, and a numba kernel that
reads the weight once for up to 12 rows), decode_ops.py (RMSNorm and rotary embedding as numba
loops), jit.py (numba with its disk cache where it can write one). Not here: custom CUDA or
Triton kernels.

This folder is installed as `tokensurgery.kernels`. When the repository root is on `sys.path`
(`python -m pytest`, a notebook or `python` started in the checkout), `import kernels` would
find this folder before the hub's `kernels` package, which transformers 5.25 and later import
when they load a model; the hand-over below gives that name back to the hub's package.
"""

import sys as _sys


def _hand_over_top_level_name() -> None:
    """Imported as top-level `kernels`: load the installed hub package under that name instead
    (the import system returns whatever `sys.modules["kernels"]` holds once this file has run).
    Without one installed nothing happens, as before."""
    import importlib.machinery
    import importlib.util
    import os

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    elsewhere = [p for p in _sys.path if os.path.abspath(p or os.curdir) != root]
    spec = importlib.machinery.PathFinder.find_spec("kernels", elsewhere)
    if spec is None or spec.loader is None:
        return
    module = importlib.util.module_from_spec(spec)
    _sys.modules["kernels"] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del _sys.modules["kernels"]
        raise


if __name__ == "kernels":
    _hand_over_top_level_name()
