"""Service templates (a launchd agent plist, a systemd user unit), shipped as package data so
`mlxd service install` works from a wheel as well as from a checkout (server/service.py)."""
