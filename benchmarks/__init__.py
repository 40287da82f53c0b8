"""Scripts that measure speed, memory and search quality; each writes JSON to benchmarks/results/."""
