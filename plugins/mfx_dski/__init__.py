"""mfx_dski plugin (work in progress)."""
