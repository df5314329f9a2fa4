"""Training code (PyTorch). Imported only by `realtime train`: the live runtime never imports torch."""
