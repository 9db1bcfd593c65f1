"""`tandem profile`: measure a model with the serving settings, for placement: auto."""
