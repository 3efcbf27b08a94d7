"""The operator's terminal UI (a client of the HTTP API only); see issue 8."""
