"""Event-driven core of the molochain workers: events, state, signals and CLI."""
