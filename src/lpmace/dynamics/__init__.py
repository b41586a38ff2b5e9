"""GPU-resident molecular dynamics: batched neighbour lists and integrators on the positions' device."""
