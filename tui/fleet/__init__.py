"""The fleet console: many boxes in one view (``appliance tui --fleet FILE``) and in one
table (``appliance status --fleet FILE``).

``config`` reads the fleet file, ``poller`` polls every box over its HTTP API (no Textual:
the CLI's ``status --fleet`` uses it too), ``screen`` and ``app`` draw it."""
