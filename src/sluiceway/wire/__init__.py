"""Sans-IO wire formats: events to bytes and bytes to events. No I/O library is imported here."""
