"""DiffROAR retraining: jobs, their execution and the results log."""
from fastroar.roar.jobs import Job, sweep
from fastroar.roar.results import append_result, read_results

__all__ = ["Job", "sweep", "append_result", "read_results"]
