"""Tasks 1-3: one training iteration (forward, backward, SGD update) per peer."""

import pytest

from bench import tasks as T

CFG = T.Config()


@pytest.mark.parametrize("task", list(CFG.iterations))
def test_iteration(benchmark, peer, task):
    spec = CFG.iterations[task]
    sampler = T.make_sampler("iteration", spec, peer, CFG)
    sampler.setup(0.0)  # the warm-up call: a compiling peer compiles here
    benchmark.group = f"iteration {task} {'-'.join(map(str, spec['widths']))} " \
                      f"batch {spec['batch']}"
    benchmark.extra_info["gflop"] = T.iteration_flops(spec["widths"], spec["batch"]) / 1e9
    benchmark(sampler.fn)
