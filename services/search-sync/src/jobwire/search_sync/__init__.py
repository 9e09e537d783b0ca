"""jobwire search sync: keep a search index of the application's cases in step with its database."""
