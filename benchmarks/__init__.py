"""softcar's benchmarks (``python -m benchmarks.softcar_bench``).

A regular package on purpose: opacus installs a top-level ``benchmarks`` package into
site-packages, which would shadow a namespace package here.
"""
