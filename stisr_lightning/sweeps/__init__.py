"""Sweeps: sweep files -> cells -> stisr-train runs -> results store -> paper-shaped tables."""
