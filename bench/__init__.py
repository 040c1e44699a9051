"""Benchmarks writing bench/results/NAME.json (see /work/shared/BENCH_RESULTS.md): `python bench/NAME.py` or
`python -m bench.NAME` from the repository root."""
