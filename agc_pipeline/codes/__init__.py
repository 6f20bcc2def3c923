"""Assignment matrices A (designs, graphs, cyclic, fractional repetition) and the encoders B
of the paper's schemes, one module per scheme (stack (11), random diagonal (7), Hadamard
null-space (19), the exact baselines)."""
