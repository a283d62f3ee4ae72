"""The code that touches torch and NumPy memory; each module carries out planned steps."""
