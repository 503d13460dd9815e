"""tokensurgery.kernels: the hot loops, in pure torch (CPU always; the same code runs on a GPU).

omp.py (batched Orthogonal Matching Pursuit with screening and ridge), surface_index.py (tokens
sorted by surface bytes, for cover-tree walks), segments.py (segment softmax/sum and words
grouped by length for the hierarchical byte models). Not here: custom CUDA or Triton kernels.
"""
