"""The bad-input corpus: generated cases across every stage, each asserting exit code, cause and no loss."""
