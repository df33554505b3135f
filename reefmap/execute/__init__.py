"""Running a plan: the bounded-submit loop, executors, global batch runs, progress."""
