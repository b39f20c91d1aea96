"""The device bus and the devices on it (16550 UART, debug-exit port)."""
