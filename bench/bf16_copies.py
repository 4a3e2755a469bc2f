"""mixed_bfloat16 iterations inside ``fit``: with the weights' packed copies that the update
writes (the default), and without them (a batch callback is user code between iterations,
so every product packs the float32 weights), interleaved.

    python -m bench.bf16_copies [--threads 1 2] [--reps 7]

Per shape and thread count: one ``fit`` epoch of `batches` batches, timed whole, for each
variant in turn, `reps` times after one warm-up; prints the median and the minimum time per
iteration (the epoch's time / its iterations, the first of which packs in both) and the
difference. The float32 and bfloat16 numbers of ``bench.bf16`` come from ``train_step``
loops, which never read the copies.
"""

import argparse
import statistics
import time

import numpy as np

import minitrain as mt

SHAPES = {"wide": ((1024, 2048, 2048, 10), 512, 16), "mnist": ((784, 256, 128, 10), 128, 60)}


class _BatchHook(mt.Callback):
    """Does nothing after each iteration, but is a batch hook: the runner no longer
    vouches for the weights."""

    def on_iteration_end(self, iteration, logs=None):
        pass


def _model(widths):
    hidden = [mt.Dense(w, activation="relu") for w in widths[1:-1]]
    return mt.Sequential(hidden + [mt.Dense(widths[-1])], seed=0, dtype="mixed_bfloat16")


def run(threads, reps):
    mt.set_num_threads(threads)
    rng = np.random.default_rng(0)
    rows = {}
    for name, (widths, batch, batches) in SHAPES.items():
        X = rng.normal(size=(batch * batches, widths[0])).astype(np.float32)
        y = rng.integers(0, widths[-1], batch * batches)
        fits = {"copies": (_model(widths), []), "packing": (_model(widths), [_BatchHook()])}
        times = {key: [] for key in fits}
        for r in range(reps + 1):
            for key, (model, callbacks) in fits.items():
                t0 = time.perf_counter()
                model.fit(X, y, epochs=1, batch_size=batch, verbose=0, metrics=None,
                          callbacks=callbacks, optimizer=mt.SGD(lr=0.01, momentum=0.9))
                if r:  # the first round warms up
                    times[key].append((time.perf_counter() - t0) / batches)
        rows[name] = times
        on, off = (statistics.median(times[k]) for k in ("copies", "packing"))
        print(f"threads {threads}  {name:5s}  copies {on * 1e3:7.2f} ms (min "
              f"{min(times['copies']) * 1e3:7.2f})  packing {off * 1e3:7.2f} ms (min "
              f"{min(times['packing']) * 1e3:7.2f})  saved {100 * (off - on) / off:5.1f} %",
              flush=True)
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--reps", type=int, default=7)
    args = parser.parse_args(argv)
    for threads in args.threads:
        run(threads, args.reps)


if __name__ == "__main__":
    main()
