"""The admin API's routers, one per area."""
