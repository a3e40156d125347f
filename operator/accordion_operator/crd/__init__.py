"""The CRDs, generated from the pydantic models of `accordion_operator.api`."""
