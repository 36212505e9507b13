"""Scene text image super-resolution experiment suite."""
