"""The device bus and the devices on it: 16550 UART, debug-exit port, and the PC platform
(8259A PICs, 8254 PIT and port 0x61, CMOS/RTC, reset ports, POST codes, QEMU's pc-testdev)."""
