"""The operator's `clearance` command: one subcommand per process kind, plus the
local stack and the client commands (`upload`, `status`, `watch`)."""
