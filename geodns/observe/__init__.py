"""What operators see of the query path: metrics and the query log."""
