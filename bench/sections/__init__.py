"""One module per benchmark section; `bench/bench.py` runs them."""
