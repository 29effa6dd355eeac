"""mfx_retrieval plugin (work in progress)."""
