"""Soul documents: the model and its parser, validation, snapshots, and Claude Code agent files."""
