"""The running process: start-up, reload, shutdown, worker processes, the admin API, systemd."""
