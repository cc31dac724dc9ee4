"""The tools people would use instead of edgeq, as their documentation shows them. Each is a
standalone script, run in its own process so its wall time includes its imports, as edgeq's does."""
