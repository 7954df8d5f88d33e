"""Training: one loop for sources, targets alone and QUANTA runs; metrics on the device."""
