"""The run engine: the run context, one run (``run_one``), progress events, sources, layer selection, the
resume fingerprint. Back-ends call it; it calls the trainer."""
