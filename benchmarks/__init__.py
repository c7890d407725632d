"""Performance benchmarks: each script compares a ragrec stage with a reference run in the same process."""
