"""The DVC stages, one module each: `run(params, paths)` and the wiring it needs, nothing more."""
