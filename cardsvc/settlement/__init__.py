"""Direct settlement: the benefit policy engine, its parameters and the settlement service."""
