"""Data: sources, the sharded dataset artifact and its loader, validation, captions, generated shapes."""
