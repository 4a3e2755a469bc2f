"""Tasks 1-3: one training iteration (forward, backward, SGD update) per peer."""

import pytest

from bench import peers as P
from bench import tasks as T

CFG = T.Config()


@pytest.mark.parametrize("task", list(CFG.iterations))
def test_iteration(benchmark, peer, task):
    spec = CFG.iterations[task]
    widths, batch = spec["widths"], spec["batch"]
    X, y = T.classification_data(batch, widths[0], widths[-1], seed=0)
    trainer = peer.trainer(P.initial_weights(widths), T.LR, T.MOMENTUM)
    trainer.step(X, y)  # warm-up: a compiling peer compiles here
    benchmark.group = f"iteration {task} {'-'.join(map(str, widths))} batch {batch}"
    benchmark.extra_info["gflop"] = T.iteration_flops(widths, batch) / 1e9
    benchmark(trainer.step, X, y)
