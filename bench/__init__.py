"""zxl benchmarks (``make bench``): figures measured side by side with a named baseline."""

import functools


def one_torch_thread(fn):
    """Run a benchmark with one torch thread, as on a Dask worker (OMP_NUM_THREADS=1 there): on a
    small shared machine a second thread makes each call wait on a busy core (10x slower, measured
    under load), which drowns the comparison in noise."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        import torch

        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return fn(*args, **kwargs)
        finally:
            torch.set_num_threads(threads)

    return wrapper
