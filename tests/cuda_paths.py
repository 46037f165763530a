"""The ways a layer runs on the GPU, for tests to choose from (``tests/test_cuda.py``,
``tests/compile_cuda_kernels.py``).

PATHS: the walk (one block per sequence, W_hh in shared memory), the walk with two
threads per block and W_hh read from global memory (every strided loop and the uncached
branch), or the batched recurrence (tiled products).
"""
PATHS = ("walk", "walk_strided", "batched")


def use_path(monkeypatch, path):
    """Make layers of any size take ``path`` until ``monkeypatch`` is undone (layers whose
    state outgrows a walk's shared memory run batched on every path)."""
    from dynamics import gpu
    from kernels import cuda_sequence

    if path == "batched":
        monkeypatch.setattr(gpu, "WALK_MIN_SEQUENCES", 10 ** 9)
        monkeypatch.setattr(gpu, "BATCHED_MIN_BATCH", 1)
    else:
        monkeypatch.setattr(gpu, "WALK_MIN_SEQUENCES", 1)
    if path == "walk_strided":
        monkeypatch.setattr(cuda_sequence, "walk_threads", lambda n_rows: min(n_rows, 2))
        monkeypatch.setattr(cuda_sequence, "weights_fit", lambda *shape: False)
