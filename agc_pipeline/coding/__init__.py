"""The paper's coding maths: decoding (Section II), the closed-form bounds (Sections IV–VI)
and the straggler models. Pure numpy/torch: no Hydra, W&B or torch.distributed."""
