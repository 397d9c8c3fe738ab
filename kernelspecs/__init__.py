"""Preset kernelspecs, installed by `dockerkernel install NAME`; shipped as dockerkernel.presets."""
