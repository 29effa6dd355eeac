"""mfx_generators plugin (work in progress)."""
