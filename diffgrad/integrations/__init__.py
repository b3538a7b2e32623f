"""Hooks that make ``DiffGrad`` available by name in other libraries' optimizer factories."""
