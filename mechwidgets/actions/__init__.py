"""The five research actions, registered by name on import."""
