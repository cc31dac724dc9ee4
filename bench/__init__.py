"""edgeq's benchmark (run on demand, not in the tests): `python -m bench`. See bench/README.md."""
