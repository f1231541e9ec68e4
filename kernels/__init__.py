"""fastvlmrl.kernels: Triton kernels with PyTorch references (imports torch and triton only)."""
