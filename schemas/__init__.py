"""HTTP and queue contracts plus settings: pydantic only, shared by the gateway and the workers."""
