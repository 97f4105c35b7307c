"""The engine: kernels, .beton I/O, loaders, the rank store, the results log, workspace and locks,
executors and fault points. It takes arrays and paths; it never sees a model or a config."""
