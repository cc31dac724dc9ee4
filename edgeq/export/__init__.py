"""Exporters, one module per format. Each writes its artifact and returns the format's facts
(for the manifest). Artifacts are loaded back by `edgeq.runner`, the same code that runs them
on the target."""
