"""First-stage autoencoders that latent diffusion systems denoise in (ResShift's VQGAN-f4, pixel-space identity)."""
