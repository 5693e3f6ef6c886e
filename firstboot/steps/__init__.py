"""The steps after fetch, in order; each observes, compares, then acts or does nothing, and says which."""
