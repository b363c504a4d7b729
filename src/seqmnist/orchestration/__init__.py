"""Running the pipeline for Prefect: the DVC adapter, stage subprocesses, and what follows a run."""
