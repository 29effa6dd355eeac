"""mfx_freq plugin (work in progress)."""
