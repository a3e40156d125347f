"""The trace-driven elasticity benchmark's parts (issue 20): the speedup model fitted to the
trainer's measurements (`speedup`), the job-mix generator from published cluster statistics
(`trace`) and the discrete-event replay through the real allocator and the baselines (`sim`).
The command line is `python -m benchmarks.elastic_trace`; docs/elasticity.md explains it all."""
