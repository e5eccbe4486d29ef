"""SAM itself: building SAMs, reading checkpoints safely, the official downloads, the ``Teacher`` the rest of the
toolkit sees, prompts, and our model-file writer/loader."""
