"""Storage backends: the interface in :mod:`.base`, the shared SQL layer in :mod:`.sql`."""
