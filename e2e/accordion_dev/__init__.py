"""e2e/accordion_dev"""
