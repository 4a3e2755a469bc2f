"""minitrain benchmark suite: peers, tasks, the report (python bench/report.py)."""
