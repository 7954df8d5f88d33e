"""The QUANTA core: the gate, the hooks that wire it between source and target, layer discovery and
model surgery. It knows nothing of datasets, training or architectures by name."""
