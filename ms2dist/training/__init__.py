"""Training both stages with Accelerate (``ms2dist train``)."""
