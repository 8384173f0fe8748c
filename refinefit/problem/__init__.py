"""Problem set-up: parameters and their modes, models, bounds, constraints,
clustering. Turns a user's arguments into arrays; solves nothing."""
