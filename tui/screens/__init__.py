"""The console's screens: overview, one pipeline, help, and the confirmation dialog."""
