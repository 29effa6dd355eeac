"""mfx_npr plugin (work in progress)."""
