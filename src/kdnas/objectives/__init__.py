"""What a student is taught and scored by: KD losses, teacher combiners, metrics, latency."""
