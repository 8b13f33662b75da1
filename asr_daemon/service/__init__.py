"""Running as a system service: systemd notification and watchdog, health checks and metrics."""
