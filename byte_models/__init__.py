"""tokensurgery.byte_models — see DESIGN.md; filled in by later issues."""
