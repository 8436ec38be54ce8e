"""Apps that the benchmarks serve."""
