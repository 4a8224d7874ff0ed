"""The asynchronous index builder job (thin: uses realm_jax)."""
