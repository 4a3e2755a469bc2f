"""The busy-core benchmark task (bench/busy.py) on tiny sizes: the competitor is bounded
and ended, every run reports a time and the threads used, and the table renders."""

import numpy as np

from bench import busy


def test_busy_core_task_runs_and_ends_its_competitor(tmp_path):
    cfg = busy.BusyConfig.quick()
    cfg.workloads, cfg.settings, cfg.loads = ("epoch", "train_step"), ("default", "1"), \
        ("quiet", "busy")
    started = []
    real_start = busy.start_competitor

    def start(seconds):
        proc = real_start(seconds)
        started.append(proc)
        return proc

    busy.start_competitor = start
    try:
        result = busy.run(cfg)
    finally:
        busy.start_competitor = real_start
    assert len(started) == 4 and all(p.poll() is not None for p in started)
    for load in ("quiet", "busy"):
        for key in ("minitrain/epoch/default", "minitrain/epoch/1",
                    "minitrain/train_step/default", "minitrain/train_step/1"):
            (run,) = result["runs"][load][key]
            assert "error" not in run, run
            assert run["seconds"] > 0 and run["units"] > 0
            assert np.isfinite(result["medians"][load][key])
        assert result["runs"][load]["minitrain/epoch/1"][0]["threads"] == [1]
    text = busy.markdown(result)
    assert "| minitrain | MNIST-shaped epoch |" in text and "busy default ÷ busy 1" in text
