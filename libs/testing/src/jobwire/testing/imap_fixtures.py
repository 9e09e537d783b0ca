"""pytest fixtures: imap test server (see the module that defines them)."""
