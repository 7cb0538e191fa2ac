"""Reading files: the server config and octoDNS zone files, validated with file:line errors."""
