"""The run side: one job from a composed config to results.json (runner), its lock and resume key (jobs),
signals, the results and per-item records it writes, and the sweep around many jobs."""
