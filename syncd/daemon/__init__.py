"""The long-running daemon (``syncd run``): event sources, folder watches, scheduling."""
