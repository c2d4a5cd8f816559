"""The benchmark's helpers, apart from the product: bench.py imports them, no product module does."""
