"""`python -m packforcing_core`: generate, plan, tiny-assets (main), report (report),
train-compressor and evaluate-compressor (compressor), option parsing and up-front checks (options).
May import every other package of the core."""
