"""Use cases: one database transaction each; side effects leave through the outbox."""
