"""Utilities every layer may use: atomic files, devices, the allocator switch, interrupts."""
