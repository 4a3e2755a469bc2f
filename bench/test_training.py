"""Task 4 (one shuffled epoch over 60000x784) and task 5 (time to 95 % test accuracy on
the shipped digits) per peer."""

import itertools

from bench import peers as P
from bench import tasks as T

CFG = T.Config()


def test_epoch(benchmark, peer):
    X, y = T.classification_data(CFG.epoch_rows, CFG.epoch_features, CFG.epoch_widths[-1],
                                 seed=0)
    trainer = peer.trainer(P.initial_weights(CFG.epoch_widths), T.LR, T.MOMENTUM)
    warm = 2 * CFG.epoch_batch + CFG.epoch_rows % CFG.epoch_batch  # every batch shape
    trainer.epoch(X[:warm], y[:warm], CFG.epoch_batch, 0)
    seeds = itertools.count(1)
    benchmark.group = f"epoch {CFG.epoch_rows}x{CFG.epoch_features} batch {CFG.epoch_batch}"
    benchmark.extra_info["rows"] = CFG.epoch_rows
    benchmark.pedantic(lambda: trainer.epoch(X, y, CFG.epoch_batch, next(seeds)),
                       rounds=CFG.epoch_reps, iterations=1)


def test_time_to_accuracy(benchmark, peer):
    data = T.digits_split()
    weights = P.initial_weights(T.accuracy_widths(CFG, data))
    outcomes = []

    def run():
        trainer = peer.trainer(weights, CFG.accuracy_lr, T.MOMENTUM)
        outcomes.append(T.train_until(trainer, data, CFG))

    benchmark.group = f"time to {CFG.accuracy_target:.0%} on digits"
    benchmark.pedantic(run, rounds=CFG.accuracy_reps, iterations=1, warmup_rounds=1)
    benchmark.extra_info.update(outcomes[-1])
    assert all(o["reached"] for o in outcomes), outcomes
