"""Training both stages under Accelerate: the loop, the Stage objects, validation, checkpoints,
resume and preemption, previews, export (see docs/architecture.md)."""
