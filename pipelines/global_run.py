#!/usr/bin/env python
"""One batch job of a global reefmap run — a thin wrapper over ``reefmap.cli.global_cmds`` (the logic lives in
``reefmap.execute.batch``).

    python pipelines/global_run.py pipelines/configs/global-l15.yaml [--mask M] [--out S] [--profile P] [--jobs N]

Loads the config → plans the tiles with the candidate mask (no graph for the globe) → creates/opens the store →
launches the cluster profile → streams the unfinished tiles with a bounded number in flight → logs tiles/s,
Mpx/s and ETA to stderr → writes a summary JSON (``summary:``, or ``<out>.summary-<job>.json``).

SIGUSR1 (sbatch ``--signal=B:USR1@120``) or SIGTERM stops it cleanly: nothing new is submitted, tiles in flight
finish; a second signal abandons them. Run it again (resubmit the same sbatch script) to continue; several jobs
may run on one store at once. Exit status: 0 complete, 3 stopped with work left, 1 tiles failed, 2 usage error.
"""

import sys

from reefmap.cli.global_cmds import global_run_main as main

if __name__ == "__main__":  # the guard LocalCluster's spawned workers need
    sys.exit(main())
