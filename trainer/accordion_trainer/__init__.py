"""trainer/accordion_trainer"""
