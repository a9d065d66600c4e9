"""HTTP routes, versioned under /v1."""
