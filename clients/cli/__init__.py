"""The Clearance client: the `clearance upload|status|watch` commands (see `add_commands`)."""
