"""operator/accordion_operator"""
