"""Built-in tool modules: one file per module; the registry finds them by scanning this package."""
