"""Run every benchmark and print its figures."""

import sys

print("no benchmarks yet", file=sys.stderr)
