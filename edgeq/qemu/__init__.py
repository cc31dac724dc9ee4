"""The emulated aarch64 target: QEMU user mode, an arm64 sysroot and the aarch64 runtime wheels,
provisioned in edgeq's cache (`provision`), with stub CUDA libraries for PyPI's aarch64 torch
(`stubs`)."""
