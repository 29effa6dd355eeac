"""mfx_univfd plugin (work in progress)."""
