"""mfx_noise plugin (work in progress)."""
