"""Report: tables (rich, JSON) and figures of a measurement."""
