//! The node's message log: an append-only, hash-chained SQLite log, group-committed.
