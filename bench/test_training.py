"""Task 4 (one shuffled epoch over 60000x784) and task 5 (time to 95 % test accuracy on
the shipped digits) per peer; task 8 (a whole scikit-learn fit) per estimator peer."""

import pytest

from bench import tasks as T

CFG = T.Config()


def test_epoch(benchmark, peer):
    sampler = T.make_sampler("epoch", {}, peer, CFG)  # warms up on a short epoch
    benchmark.group = f"epoch {CFG.epoch_rows}x{CFG.epoch_features} batch {CFG.epoch_batch}"
    benchmark.extra_info["rows"] = CFG.epoch_rows
    benchmark.pedantic(sampler.fn, rounds=CFG.epoch_reps, iterations=1)


def test_time_to_accuracy(benchmark, peer):
    sampler = T.make_sampler("accuracy", {}, peer, CFG)
    benchmark.group = f"time to {CFG.accuracy_target:.0%} on digits"
    benchmark.pedantic(sampler.fn, rounds=CFG.accuracy_reps, iterations=1, warmup_rounds=1)
    outcome = sampler.info()
    benchmark.extra_info.update(outcome)
    assert outcome["reached"], outcome


@pytest.mark.parametrize("case", list(CFG.sklearn_cases))
def test_sklearn_fit(benchmark, estimator_peer, case):
    sampler = T.make_sampler("sklearn_fit", CFG.sklearn_cases[case], estimator_peer, CFG)
    benchmark.group = f"scikit-learn fit: {case}"
    benchmark.pedantic(sampler.fn, rounds=CFG.sklearn_reps, iterations=1)
    fitted = sampler.info()
    benchmark.extra_info.update({k: fitted[k] for k in ("data", "n_iter_", "loss_")})
    assert fitted["n_iter_"] == CFG.sklearn_cases[case]["max_iter"], fitted["n_iter_"]
