"""pytest fixtures: servicebus test server (see the module that defines them)."""
