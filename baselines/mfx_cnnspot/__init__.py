"""mfx_cnnspot plugin (work in progress)."""
